package workers

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// EnvCPU in a worker's environment is the CPU it keeps all its threads on.
const EnvCPU = "WEFT_INGRESS_WORKER_CPU"

// CPUsFor says which CPU each of n workers should run on: one each when the CPUs this
// process may use are exactly n, else nil (no pinning).
//
// Why pin: left to the kernel, two busy workers sometimes share one CPU for tens of
// milliseconds, taking turns a scheduler tick (4 ms) at a time while the load generator
// and the endpoints run on the other; every request of the waiting worker then waits a
// tick. That, not the cost of a request, was most of the keep-alive p99 against nginx
// (docs/benchmarks.md, "Ingress"). When the process may use more CPUs than it has
// workers (a CPU quota below the machine's size), any fixed choice could land on CPUs
// that other work keeps busy, so the kernel places them.
func CPUsFor(n int) []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	return oneEach(cpuList(&set), n)
}

// oneEach gives n workers one CPU of allowed each, or nil when they are not as many.
func oneEach(allowed []int, n int) []int {
	if n < 2 || len(allowed) != n {
		return nil
	}
	return allowed
}

func cpuList(set *unix.CPUSet) []int {
	var out []int
	for cpu := 0; cpu < len(set)*64; cpu++ {
		if set.IsSet(cpu) {
			out = append(out, cpu)
		}
	}
	return out
}

// PinFromEnv keeps every thread of this worker on the CPU its master chose (EnvCPU), if
// it chose one, and says which.
func PinFromEnv() (cpu int, pinned bool, err error) {
	v, ok := os.LookupEnv(EnvCPU)
	if !ok {
		return 0, false, nil
	}
	cpu, err = strconv.Atoi(v)
	if err != nil || cpu < 0 {
		return 0, false, fmt.Errorf("%s=%q: not a CPU number", EnvCPU, v)
	}
	return cpu, true, pinProcess(cpu)
}

// pinProcess sets the affinity of every thread of this process to cpu. A thread started
// meanwhile inherits its creator's affinity, so passes repeat until one finds every
// thread already pinned; threads started after that inherit the pin.
func pinProcess(cpu int) error {
	var want unix.CPUSet
	want.Set(cpu)
	for pass := 0; pass < 10; pass++ {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		changed := false
		for _, task := range tasks {
			tid, err := strconv.Atoi(task.Name())
			if err != nil {
				continue
			}
			var got unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &got); err == nil && got == want {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &want); err != nil && err != unix.ESRCH { // ESRCH: it ended
				return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("pin to CPU %d: threads kept appearing", cpu)
}
