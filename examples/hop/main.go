// Command hop moves messages through svckit once (a Batcher publishing
// envelopes to nsqd, a Consumer taking them, a replay.Tracker
// deduplicating them), prints the rate as one JSON line and exits: the
// svckit side of `svckit bench`'s hop, built as a program that imports
// svckit is built.
//
//	go run ./examples/hop --consul-addr 127.0.0.1:8500 --data-dir /tmp/hop --count 300000
//
// Why a program of its own: Go builds a dependency with the main module's
// go.mod, not the dependency's. This module requires svckit as yours
// does, so bin/hop is what your build of svckit does, and `svckit bench`
// runs it against the very same code built by the repository (`svckit
// bench hop`) and reports the ratio, importer_hop_ratio. (It once showed
// 0.29: svckit's go.mod replaced go-nsq with its patched copy, which Go
// ignores outside svckit's own builds. The copy is now a package of
// svckit.)
//
// hop.go is the hop's code, the same as the svckit CLI's (its bench
// package is internal to the CLI, so this module keeps a copy, which a
// test of svckit's compares with the original). Nothing else is here on
// purpose: any code of its own would be a second thing the two builds
// differ by.
package main

import (
	"os"

	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, HopSpec(version)))
}
