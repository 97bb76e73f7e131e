// Command membrane-cni is Membrane's CNI plugin: runtimes (podman,
// containerd, Kubernetes, cnitool) run it to attach a container's network
// namespace to the Membrane agent, which wires it and enforces its
// policy. See docs/runtimes.md.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/cni"
)

// Version is set at build time.
var Version = "dev"

func init() {
	// Namespace switches must stay on one thread.
	runtime.LockOSThread()
}

func main() {
	if s := os.Getenv(cni.HelperEnv); s != "" {
		os.Exit(runJob(s))
	}
	p := &cni.Plugin{
		Stdout: os.Stdout,
		// The runtime shows stderr with a failure; stdout is the result.
		Log:        slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Agent:      func(socket string) cni.Agent { return api.NewClient(socket) },
		PodmanUp:   func(socket string) bool { return cni.NewPodmanClient(socket).Up() },
		Spawn:      cni.SpawnSelf,
		CheckNetns: cni.CheckInterface,
	}
	skel.PluginMainFuncs(p.Funcs(), cni.Versions, "membrane-cni "+Version+": attaches containers to the Membrane agent")
}

// runJob is the detached label lookup ADD started.
func runJob(s string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("cmd", "membrane-cni label job")
	var job cni.Job
	if err := json.Unmarshal([]byte(s), &job); err != nil {
		log.Error("bad job", "error", err)
		return 2
	}
	log = log.With("container", job.ContainerID)
	err := cni.RunJob(context.Background(), job, api.NewClient(job.Socket), cni.NewPodmanClient(job.Podman), log)
	if err != nil {
		log.Error("label lookup failed: the endpoint keeps its init labels", "error", err)
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
