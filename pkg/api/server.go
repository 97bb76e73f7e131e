package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/policy"
)

// Backend is what the API serves: the agent.
type Backend interface {
	Status(ctx context.Context) Status
	AddEndpoint(ctx context.Context, req EndpointRequest) (*Endpoint, error)
	ListEndpoints(ctx context.Context) []Endpoint
	GetEndpoint(ctx context.Context, id uint32) (*Endpoint, error)
	UpdateEndpoint(ctx context.Context, id uint32, upd EndpointUpdate) (*Endpoint, error)
	DeleteEndpoint(ctx context.Context, id uint32) error
	ListIdentities(ctx context.Context) []Identity
	ImportPolicy(ctx context.Context, req PolicyRequest) (*PolicyResult, error)
	ValidatePolicy(ctx context.Context, req PolicyRequest) (*PolicyResult, error)
	GetPolicy(ctx context.Context) PolicyList
	DeletePolicy(ctx context.Context, name string) (*PolicyResult, error)
	DeleteAllPolicies(ctx context.Context) (*PolicyResult, error)
	TracePolicy(ctx context.Context, req TraceRequest) (*policy.TraceResult, error)
	Subscribe(types []string) *monitor.Subscription
	BPFPolicy(ctx context.Context, id uint32) (*BPFPolicy, error)
	BPFIPCache(ctx context.Context) ([]IPCacheEntry, error)
	BPFCT(ctx context.Context) ([]CTEntry, error)
}

// Server serves the API on a unix socket.
type Server struct {
	b   Backend
	log *slog.Logger
	srv *http.Server
	ln  net.Listener
	mux *http.ServeMux
}

// MaxBody bounds request bodies (policy files included).
const MaxBody = 64 << 20

// NewServer listens on the socket (mode 0660, parent created, a stale
// socket replaced) and routes requests to b.
func NewServer(socket string, b Backend, log *slog.Logger) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", socket, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s: another agent is listening", socket)
	}
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", socket, err)
	}
	s := &Server{b: b, log: log, ln: ln, mux: http.NewServeMux()}
	s.routes()
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Handle adds a route (for the Docker plugin endpoints and the like).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops serving.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, r *http.Request) {
		st := s.b.Status(r.Context())
		code := http.StatusOK
		if !st.Healthy {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, st)
	})
	m.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.Status(r.Context()))
	})
	m.HandleFunc("GET /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.ListEndpoints(r.Context()))
	})
	m.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		var req EndpointRequest
		if !readJSON(w, r, &req) {
			return
		}
		ep, err := s.b.AddEndpoint(r.Context(), req)
		s.reply(w, http.StatusCreated, ep, err)
	})
	m.HandleFunc("GET /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		ep, err := s.b.GetEndpoint(r.Context(), id)
		s.reply(w, http.StatusOK, ep, err)
	})
	m.HandleFunc("PATCH /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		var upd EndpointUpdate
		if !readJSON(w, r, &upd) {
			return
		}
		ep, err := s.b.UpdateEndpoint(r.Context(), id, upd)
		s.reply(w, http.StatusOK, ep, err)
	})
	m.HandleFunc("DELETE /v1/endpoints/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		err := s.b.DeleteEndpoint(r.Context(), id)
		s.reply(w, http.StatusOK, map[string]uint32{"deleted": id}, err)
	})
	m.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.ListIdentities(r.Context()))
	})
	m.HandleFunc("GET /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.b.GetPolicy(r.Context()))
	})
	m.HandleFunc("POST /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		var req PolicyRequest
		if !readJSON(w, r, &req) {
			return
		}
		res, err := s.b.ImportPolicy(r.Context(), req)
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("POST /v1/policy/validate", func(w http.ResponseWriter, r *http.Request) {
		var req PolicyRequest
		if !readJSON(w, r, &req) {
			return
		}
		res, err := s.b.ValidatePolicy(r.Context(), req)
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("DELETE /v1/policy", func(w http.ResponseWriter, r *http.Request) {
		var res *PolicyResult
		var err error
		if name := r.URL.Query().Get("name"); name != "" {
			res, err = s.b.DeletePolicy(r.Context(), name)
		} else if r.URL.Query().Get("all") == "true" {
			res, err = s.b.DeleteAllPolicies(r.Context())
		} else {
			err = Errorf(http.StatusBadRequest, "delete policy: give ?name=NAME or ?all=true")
		}
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("POST /v1/policy/trace", func(w http.ResponseWriter, r *http.Request) {
		var req TraceRequest
		if !readJSON(w, r, &req) {
			return
		}
		res, err := s.b.TracePolicy(r.Context(), req)
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("GET /v1/monitor", s.monitor)
	m.HandleFunc("GET /v1/bpf/policy/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		res, err := s.b.BPFPolicy(r.Context(), id)
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("GET /v1/bpf/ipcache", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.BPFIPCache(r.Context())
		s.reply(w, http.StatusOK, res, err)
	})
	m.HandleFunc("GET /v1/bpf/ct", func(w http.ResponseWriter, r *http.Request) {
		res, err := s.b.BPFCT(r.Context())
		s.reply(w, http.StatusOK, res, err)
	})
}

// monitor streams events as JSON lines until the client goes away.
func (s *Server) monitor(w http.ResponseWriter, r *http.Request) {
	types := r.URL.Query()["type"]
	for _, t := range types {
		known := false
		for _, k := range monitor.Types {
			known = known || k == t
		}
		if !known {
			writeError(w, Errorf(http.StatusBadRequest, "monitor: unknown type %q (want drop, policy-verdict or l7)", t))
			return
		}
	}
	sub := s.b.Subscribe(types)
	defer sub.Close()
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if fl != nil {
		fl.Flush()
	}
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case e := <-sub.C:
			if err := enc.Encode(e); err != nil {
				return
			}
			// Drain what is queued before flushing.
			for n := len(sub.C); n > 0; n-- {
				if err := enc.Encode(<-sub.C); err != nil {
					return
				}
			}
			if fl != nil {
				fl.Flush()
			}
		}
	}
}

func (s *Server) reply(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		if statusOf(err) >= 500 {
			s.log.Error("request failed", "error", err)
		}
		writeError(w, err)
		return
	}
	writeJSON(w, code, v)
}

func pathID(w http.ResponseWriter, r *http.Request) (uint32, bool) {
	s := r.PathValue("id")
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "endpoint id %q is not a number", s))
		return 0, false
	}
	return uint32(n), true
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, Errorf(http.StatusBadRequest, "request body: %v", err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	body := Error{Error: err.Error()}
	var se *StatusError
	if errors.As(err, &se) {
		body.Details = se.Details
	}
	writeJSON(w, statusOf(err), body)
}
