package cniapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrUnreachable wraps every failure to reach the agent, so callers map it to "try again".
var ErrUnreachable = errors.New("weftd is not reachable")

// Client talks to weftd over its unix socket.
type Client struct {
	Socket  string
	Timeout time.Duration
}

// Do sends req and returns the agent's response; an agent-side failure comes back as *Error.
func (c Client) Do(req Request) (*Response, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	conn, err := net.DialTimeout("unix", c.Socket, timeout)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrUnreachable, c.Socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("%w: send: %v", ErrUnreachable, err)
	}
	_ = conn.(*net.UnixConn).CloseWrite()
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("%w: the agent closed the connection without an answer: %v", ErrUnreachable, err)
	}
	if resp.Error != nil {
		return &resp, resp.Error
	}
	return &resp, nil
}
