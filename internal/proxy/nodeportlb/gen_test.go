package nodeportlb

import (
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

func TestGeneratedObjectsAreFresh(t *testing.T) {
	testutil.CheckGenerated(t, "nodeportlb",
		[]string{"nodeport_bpfel.o", "nodeport_bpfeb.o", "nodeport_bpfel.go", "nodeport_bpfeb.go"}, "bpf/nodeport.c")
}
