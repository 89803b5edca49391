package sockproxy

import (
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

func TestGeneratedObjectsAreFresh(t *testing.T) {
	testutil.CheckGenerated(t, "sockproxy",
		[]string{"sock_bpfel.o", "sock_bpfeb.o", "sock_bpfel.go", "sock_bpfeb.go"}, "bpf/sock.c")
}
