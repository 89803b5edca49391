package cniapi

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestRoundTripAndErrors(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "weft.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, sock, func(_ context.Context, r Request) Response {
			if r.Op == OpStatus {
				return Response{Status: &Status{Ready: true}}
			}
			return Response{Error: &Error{Code: CodeExhausted, Msg: "pool exhausted"}}
		})
	}()
	c := Client{Socket: sock, Timeout: 2 * time.Second}
	var resp *Response
	var err error
	for range 100 {
		if resp, err = c.Do(Request{Op: OpStatus}); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil || !resp.Status.Ready {
		t.Fatalf("status: %v %+v", err, resp)
	}
	_, err = c.Do(Request{Op: OpAllocate})
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeExhausted {
		t.Fatalf("agent error: %v", err)
	}
	// A hostile peer sending garbage gets an error answer, and the server lives on.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("{not json"))
	_ = conn.(*net.UnixConn).CloseWrite()
	buf := make([]byte, 256)
	n, _ := conn.Read(buf)
	conn.Close()
	if n == 0 {
		t.Fatal("no answer to a malformed request")
	}
	if _, err := c.Do(Request{Op: OpStatus}); err != nil {
		t.Fatalf("server died after a malformed request: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := (Client{Socket: sock, Timeout: time.Second}).Do(Request{Op: OpStatus}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("after shutdown: %v", err)
	}
}
