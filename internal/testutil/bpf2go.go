package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// CheckGenerated regenerates a package's eBPF objects with the bpf2go line of its gen.go
// (run from the package's directory, as `go test` does) and compares them byte for byte
// with the committed files: a change to a C source that was not regenerated fails here.
// sources are read too, so that `go test`'s cache sees a change to them. It needs clang
// (the test command installs it).
func CheckGenerated(t *testing.T, goPackage string, generated []string, sources ...string) {
	t.Helper()
	if _, err := exec.LookPath("clang"); err != nil {
		t.Skip("clang is not installed")
	}
	for _, s := range sources {
		if _, err := os.ReadFile(s); err != nil {
			t.Fatal(err)
		}
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
	cmd := exec.Command("go", append([]string{"run", args[0], "-output-dir", out}, args[1:]...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE="+goPackage)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	for _, name := range generated {
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(committed, fresh) {
			t.Errorf("%s differs from what its C source compiles to: run go generate in its package", name)
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
