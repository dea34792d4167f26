package worker_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

// --factor's help text states MaxFactor in a struct tag, which cannot
// refer to the constant: the two must not drift apart.
func TestFactorUsageNamesMaxFactor(t *testing.T) {
	want := fmt.Sprintf("(1..%d)", worker.MaxFactor)
	for _, f := range config.FlagsOf(worker.DefaultSettings()) {
		if f.Names()[0] != "factor" {
			continue
		}
		if usage := f.(*cli.Int64Flag).Usage; !strings.Contains(usage, want) {
			t.Errorf("--factor usage %q does not say %s", usage, want)
		}
		return
	}
	t.Fatal("no --factor flag")
}
