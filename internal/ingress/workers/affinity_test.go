package workers

import (
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOneEach(t *testing.T) {
	for _, c := range []struct {
		allowed []int
		n       int
		want    []int
	}{
		{[]int{0, 1}, 2, []int{0, 1}},
		{[]int{2, 5, 7}, 3, []int{2, 5, 7}}, // a cpuset's own CPUs, not 0..n-1
		{[]int{0, 1, 2, 3}, 2, nil},         // a quota below the CPUs: the kernel places them
		{[]int{0, 1}, 4, nil},               // more workers than CPUs
		{[]int{0}, 1, nil},                  // one worker: nothing to keep apart
	} {
		if got := oneEach(c.allowed, c.n); !reflect.DeepEqual(got, c.want) {
			t.Errorf("oneEach(%v, %d) = %v, want %v", c.allowed, c.n, got, c.want)
		}
	}
}

// TestPinProcess pins a child test process's threads (the test binary's own stay free) and
// checks that every thread keeps to the CPU, those the runtime starts afterwards too (a
// goroutine locked to its thread and blocked makes the scheduler run others on another).
func TestPinProcess(t *testing.T) {
	if os.Getenv("PIN_CHILD") == "" {
		var set unix.CPUSet
		if err := unix.SchedGetaffinity(0, &set); err != nil {
			t.Fatal(err)
		}
		cpus := cpuList(&set)
		cpu := cpus[len(cpus)-1]
		cmd := exec.Command(os.Args[0], "-test.run=^TestPinProcess$")
		cmd.Env = append(os.Environ(), "PIN_CHILD=1", EnvCPU+"="+strconv.Itoa(cpu))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	cpu, pinned, err := PinFromEnv()
	if err != nil || !pinned {
		t.Fatalf("PinFromEnv: %d %v %v", cpu, pinned, err)
	}
	started := make(chan struct{})
	go func() { // a goroutine on a thread of its own, started after the pin
		runtime.LockOSThread()
		close(started)
		select {}
	}()
	<-started
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var want unix.CPUSet
	want.Set(cpu)
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		var got unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &got); err != nil {
			continue // ended
		}
		if got != want {
			t.Errorf("thread %d may run on %v, want CPU %d only", tid, cpuList(&got), cpu)
		}
	}
	if len(tasks) < 2 {
		t.Errorf("%d threads: the check saw too few to mean anything", len(tasks))
	}
}
