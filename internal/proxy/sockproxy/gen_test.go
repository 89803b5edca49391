package sockproxy

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedObjectsAreFresh regenerates the programs with the go:generate line of
// gen.go and compares the bytes with the committed objects: a change to bpf/sock.c that
// was not regenerated fails here. It needs clang (the test command installs it).
func TestGeneratedObjectsAreFresh(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		t.Skip("clang is not installed")
	}
	// Read here too so that `go test`'s cache sees a change to the C source.
	if _, err := os.ReadFile("bpf/sock.c"); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go run "); ok {
			args = splitQuoted(rest)
		}
	}
	if len(args) < 2 {
		t.Fatal("no bpf2go line in gen.go")
	}
	out := t.TempDir()
	cmdArgs := append([]string{"run", args[0], "-output-dir", out}, args[1:]...)
	cmd := exec.Command("go", cmdArgs...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=sockproxy")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	for _, name := range []string{"sock_bpfel.o", "sock_bpfeb.o", "sock_bpfel.go", "sock_bpfeb.go"} {
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(committed, fresh) {
			t.Errorf("%s differs from what bpf/sock.c compiles to: run go generate ./internal/proxy/sockproxy", name)
		}
	}
}

// splitQuoted splits a go:generate line into words; double quotes group words.
func splitQuoted(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}
