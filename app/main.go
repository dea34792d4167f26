// Command app is the reference pipeline's app: wiring only (see pipeline/app).
package main

import (
	"os"

	"github.com/svckit/svckit/pipeline/app"
	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, app.Spec(version)))
}
