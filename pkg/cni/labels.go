package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
)

// Podman holds the container's lock while it sets up the network, and its
// API waits for that lock: ADD cannot read the container's labels without
// deadlocking. So ADD gives the endpoint the init identity and starts a
// detached copy of the plugin (a Job) that waits until podman shows the
// container, then gives the endpoint its labels.

// HelperEnv names the environment variable that makes membrane-cni run a
// Job (given as JSON in it) instead of a CNI command.
const HelperEnv = "MEMBRANE_CNI_LABEL_JOB"

// Job is a pending label lookup.
type Job struct {
	Socket      string        `json:"socket"`
	Podman      string        `json:"podman"`
	Ref         string        `json:"ref"`
	IfName      string        `json:"ifName"`
	ContainerID string        `json:"containerID"`
	Base        []string      `json:"base"`
	Timeout     time.Duration `json:"timeout"`
}

// SpawnSelf starts the running executable as a detached Job: its own
// session, no stdio of the runtime's (which waits for the plugin's
// stdout to close), output to logFile if given.
func SpawnSelf(job Job, logFile string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	b, err := json.Marshal(job)
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), HelperEnv+"="+string(b))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if logFile != "" {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open log file: %w", err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start label job: %w", err)
	}
	return cmd.Process.Release()
}

// RunJob is the detached process: it waits for the container's labels
// and gives them to the endpoint. A container podman does not know gets
// the labels known at ADD.
func RunJob(ctx context.Context, job Job, ag Agent, pod *PodmanClient, log *slog.Logger) error {
	if job.Timeout <= 0 {
		job.Timeout = DefaultLabelTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, job.Timeout)
	defer cancel()
	wait := 50 * time.Millisecond
	sleep := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
		return nil
	}
	var want []string
	for want == nil {
		// Podman answers once `podman run` (or start) has let go of the
		// container.
		lbls, err := pod.Labels(ctx, job.ContainerID)
		switch {
		case err == nil:
			merged, skipped, merr := MergeLabels(job.Base, lbls)
			if merr != nil {
				return fmt.Errorf("labels of container %s: %w", short(job.ContainerID), merr)
			}
			if len(skipped) > 0 {
				log.Warn("container labels Membrane cannot hold are left out", "container", short(job.ContainerID), "labels", skipped)
			}
			want = merged
		case errors.Is(err, errNoContainer):
			log.Info("podman does not know the container: it keeps the labels known at ADD", "container", short(job.ContainerID))
			want = append([]string{}, job.Base...)
		default:
			log.Debug("podman does not answer yet", "error", err)
			if err := sleep(); err != nil {
				return fmt.Errorf("labels of container %s: podman at %s did not answer: %w", short(job.ContainerID), job.Podman, err)
			}
		}
	}
	for {
		eps, err := ag.ListEndpoints(ctx)
		if err == nil {
			found := find(eps, job.Ref, job.IfName)
			if len(found) == 0 {
				return nil // deleted meanwhile
			}
			ep, err := ag.UpdateEndpoint(ctx, found[0].ID, api.EndpointUpdate{Labels: want})
			if err == nil || isNotFound(err) {
				if err == nil {
					log.Info("endpoint labelled", "endpoint", ep.ID, "identity", ep.Identity, "labels", ep.Labels.String())
				}
				return nil
			}
			if !isTransient(err) {
				return fmt.Errorf("update labels of endpoint %d: %w", found[0].ID, err)
			}
		}
		if err := sleep(); err != nil {
			return fmt.Errorf("agent on %s did not take the labels: %w", job.Socket, err)
		}
	}
}

func isTransient(err error) bool { return !isBadRequest(err) }

// errNoContainer: the runtime does not know the container.
var errNoContainer = errors.New("no such container")

// PodmanClient reads containers from podman's API (its Docker-compatible
// part, so a Docker engine would do too).
type PodmanClient struct {
	socket string
	hc     *http.Client
}

// NewPodmanClient returns a client for the API on a unix socket.
func NewPodmanClient(socket string) *PodmanClient {
	return &PodmanClient{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Up reports whether the API answers within a moment.
func (c *PodmanClient) Up() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://podman/_ping", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Labels returns a container's labels. One call waits at most 5 s: podman
// may hold the container.
func (c *PodmanClient) Labels(ctx context.Context, id string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://podman/containers/"+url.PathEscape(id)+"/json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, errNoContainer
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("podman answered %s: %s", resp.Status, b)
	}
	var ct struct {
		Config struct{ Labels map[string]string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&ct); err != nil {
		return nil, fmt.Errorf("decode container: %w", err)
	}
	if ct.Config.Labels == nil {
		ct.Config.Labels = map[string]string{}
	}
	return ct.Config.Labels, nil
}
