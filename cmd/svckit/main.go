// Command svckit is the operator CLI: replay, deadletter, infra, bench.
package main

import (
	"os"

	"github.com/svckit/svckit/cmd/svckit/internal/operator"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(operator.Main(os.Args, os.Stdin, os.Stdout, os.Stderr, version))
}
