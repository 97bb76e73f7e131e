// Command membrane is Membrane's CLI and, as `membrane agent`, its daemon.
package main

import (
	"os"

	"github.com/membrane-net/membrane/pkg/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
