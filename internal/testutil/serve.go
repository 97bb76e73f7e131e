package testutil

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// ServeTCPEcho echoes TCP on a port inside the network namespace ns (a
// path) until the test ends. A connection idle for 30 s is closed.
func ServeTCPEcho(t testing.TB, ns string, port int) {
	t.Helper()
	ln, err := nsutil.Listen(ns, "tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}(c)
		}
	}()
}
