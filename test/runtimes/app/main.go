// Command app is the program inside the runtime tests' container image
// (built statically, with busybox next to it): `app serve [ADDR]` answers
// GET /public and GET /private, as the 2017 getting-started guide's
// service did; `app get URL` prints the answer's status and body, or
// "000 <error>" when there is none, and fails on anything but 2xx.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		addr := ":80"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		serve(addr)
	case "get":
		if len(os.Args) < 3 {
			usage()
		}
		os.Exit(get(os.Args[2]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: app serve [ADDR] | app get URL")
	os.Exit(2)
}

func serve(addr string) {
	host, _ := os.Hostname()
	m := http.NewServeMux()
	for _, path := range []string{"/public", "/private"} {
		m.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s from %s\n", strings.TrimPrefix(path, "/"), host)
		})
	}
	srv := &http.Server{Addr: addr, Handler: m, ReadHeaderTimeout: 5 * time.Second}
	fmt.Fprintln(os.Stderr, "serving on", addr)
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func get(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Printf("000 %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Printf("%d %s\n", resp.StatusCode, strings.TrimSpace(string(b)))
	if resp.StatusCode/100 != 2 {
		return 1
	}
	return 0
}
