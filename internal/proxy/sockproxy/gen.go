package sockproxy

// The programs are C (bpf/sock.c); the objects and their Go bindings are generated with
// clang and committed, so a plain `go build` needs no clang. TestGeneratedObjectsAreFresh
// regenerates them where clang is present and compares.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -Wall -Werror" -target bpfel,bpfeb sock bpf/sock.c -- -I/usr/include/x86_64-linux-gnu
