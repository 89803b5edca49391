package lab

import (
	"context"
	"io"
	"net"
	"os"
	"strconv"
	"sync"

	"github.com/weftnet/weft/internal/probe"
)

// Forward relays every connection accepted on listen (in the caller's namespace: the
// root one, on loopback) to to, dialed inside the namespace at netns; it writes the port
// it listens on to portFile and runs until ctx ends. `weft lab forward` runs it, so the
// lab's API server is reachable from the host through a loopback port, without a route
// into the lab.
func Forward(ctx context.Context, listen, netns, to, portFile string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if err := os.WriteFile(portFile, []byte(strconv.Itoa(port)), 0o600); err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var up net.Conn
			if err := probe.InNS(netns, func() (err error) { up, err = net.Dial("tcp", to); return err }); err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
			select {
			case <-done:
			case <-ctx.Done():
			}
		}()
	}
}
