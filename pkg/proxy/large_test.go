package proxy

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"testing"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// largeSize is the body size of the streaming tests: hundreds of MB, less
// under the race detector.
func largeSize(t *testing.T) int64 {
	if testing.Short() || raceEnabled {
		return 32 << 20
	}
	return 256 << 20
}

func patternSHA(n int64) string {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n})
	return hex.EncodeToString(h.Sum(nil))
}

// checkPattern reads r to the end and checks it is n bytes of the pattern.
func checkPattern(t *testing.T, r io.Reader, n int64) {
	t.Helper()
	buf := make([]byte, 256<<10)
	var off int64
	for {
		k, err := r.Read(buf)
		for i := 0; i < k; i++ {
			if buf[i] != pattern(off+int64(i)) {
				t.Fatalf("byte %d is %q, want %q", off+int64(i), buf[i], pattern(off+int64(i)))
			}
		}
		off += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", off, err)
		}
	}
	if off != n {
		t.Fatalf("got %d bytes, want %d", off, n)
	}
}

// checkNoBuffering fails the test if the process allocated more than a
// tenth of n bytes between its call and the call of the function it
// returns: the proxy (and the test's own server and client) stream bodies.
func checkNoBuffering(t *testing.T, n int64) func() {
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	return func() {
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if d := after.TotalAlloc - before.TotalAlloc; d > uint64(n/10) {
			t.Errorf("allocated %d MiB while moving a %d MiB body", d>>20, n>>20)
		}
	}
}

func TestLargeBodies(t *testing.T) {
	n := largeSize(t)
	sum := patternSHA(n)
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/upload|/download.*"}))
	b, p, _ := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())

	t.Run("upload content-length", func(t *testing.T) {
		defer checkNoBuffering(t, n)()
		cl.send(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n", n))
		if _, err := io.Copy(cl.c, &patternReader{n: n}); err != nil {
			t.Fatal(err)
		}
		resp, body := cl.read("POST")
		if want := fmt.Sprintf("len=%d sha=%s", n, sum); resp.StatusCode != 200 || body != want {
			t.Fatalf("%d %q, want %q", resp.StatusCode, body, want)
		}
		if resp.Close {
			t.Fatal("the proxy closes the connection after an upload")
		}
	})
	t.Run("upload chunked", func(t *testing.T) {
		cl.send("POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n")
		w := bufio.NewWriterSize(cl.c, 64<<10)
		src := &patternReader{n: n}
		// Chunks from 1 byte to 1 MiB, to take both copy paths.
		sizes := []int64{1, 100, 4096, 70000, 1 << 20, 333333}
		buf := make([]byte, 1<<20)
		for i := 0; src.off < n; i++ {
			k := min(sizes[i%len(sizes)], n-src.off)
			io.ReadFull(src, buf[:k])
			fmt.Fprintf(w, "%x\r\n", k)
			w.Write(buf[:k])
			w.WriteString("\r\n")
		}
		w.WriteString("0\r\n\r\n")
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		resp, body := cl.read("POST")
		if want := fmt.Sprintf("len=%d sha=%s", n, sum); resp.StatusCode != 200 || body != want {
			t.Fatalf("%d %q, want %q", resp.StatusCode, body, want)
		}
		if resp.Close {
			t.Fatal("the proxy closes the connection after an upload")
		}
	})
	for _, mode := range []string{"cl", "chunked"} {
		t.Run("download "+mode, func(t *testing.T) {
			defer checkNoBuffering(t, n)()
			cl.send(fmt.Sprintf("GET /download?n=%d&mode=%s HTTP/1.1\r\nHost: s\r\n\r\n", n, mode))
			resp, err := http.ReadResponse(cl.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if chunked := len(resp.TransferEncoding) > 0; chunked != (mode == "chunked") {
				t.Fatalf("transfer encoding %v in mode %s", resp.TransferEncoding, mode)
			}
			checkPattern(t, resp.Body, n)
		})
	}
	if c := b.conns.Load(); c != 1 {
		t.Errorf("backend saw %d connections, want 1", c)
	}

	t.Run("download close-delimited", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\n")
			io.Copy(c, &patternReader{n: n})
		})
		p2, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl2 := dial(t, p2.Addr())
		cl2.send("GET /download HTTP/1.1\r\nHost: s\r\n\r\n")
		resp, err := http.ReadResponse(cl2.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.ContentLength != -1 || !resp.Close {
			t.Fatalf("length %d close %v", resp.ContentLength, resp.Close)
		}
		checkPattern(t, resp.Body, n)
	})
	t.Run("chunk sizes preserved in the response", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
			io.WriteString(c, "3;name=v\r\nabc\r\n"+strconv.FormatInt(0x10000, 16)+"\r\n")
			io.Copy(c, &patternReader{n: 0x10000})
			io.WriteString(c, "\r\n0\r\nX-Sum: 42\r\n\r\n")
		})
		p2, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl2 := dial(t, p2.Addr())
		cl2.send("GET /download HTTP/1.1\r\nHost: s\r\n\r\n")
		resp, err := http.ReadResponse(cl2.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || len(body) != 3+0x10000 || string(body[:3]) != "abc" {
			t.Fatalf("body %d bytes, %v", len(body), err)
		}
		if resp.Trailer.Get("X-Sum") != "42" {
			t.Fatalf("trailer %v", resp.Trailer)
		}
	})
}
