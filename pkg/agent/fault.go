package agent

import (
	"os"
)

// faultPoint kills the agent at a named point when MEMBRANE_FAULT names it:
// fault tests use it to stop the agent in the middle of an operation, as a
// SIGKILL there would.
func (a *Agent) faultPoint(name string) {
	if os.Getenv("MEMBRANE_FAULT") == name {
		a.log.Error("fault injection: exiting", "point", name)
		os.Exit(137)
	}
}
