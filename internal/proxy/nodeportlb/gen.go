package nodeportlb

// The program is C (bpf/nodeport.c); the objects and their Go bindings are generated with
// clang and committed, so a plain `go build` needs no clang. TestGeneratedObjectsAreFresh
// regenerates them where clang is present and compares.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -Wall -Werror" -target bpfel,bpfeb nodeport bpf/nodeport.c -- -I/usr/include/x86_64-linux-gnu
