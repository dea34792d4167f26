package operator

import (
	"context"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/testenv"
)

// `svckit stream show|release`: a held claim is shown and cannot be
// released; once its holder stopped, release deletes it (what a refused
// owner with another data directory is told to do).
func TestStreamShowAndRelease(t *testing.T) {
	c := testenv.StartConsul(t)
	l, err := ownership.Acquire(context.Background(), ownership.Options{Client: c.Client, Stream: "s1", Instance: "sensor-a", Node: "n1", DataID: "d1"})
	if err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) (int, string) {
		code, out, errs := runCLI(t, append([]string{"--consul-addr", c.HTTPAddr, "stream"}, args...)...)
		return code, out + errs
	}
	if code, out := cli("show", "--stream", "s1"); code != 0 || !strings.Contains(out, "held by instance sensor-a") {
		t.Fatalf("show a held claim: %d %s", code, out)
	}
	if code, out := cli("release", "--stream", "s1"); code == 0 || !strings.Contains(out, "held by instance sensor-a") || !strings.Contains(out, "stop it first") {
		t.Fatalf("release a held claim: %d %s", code, out)
	}
	l.Release(context.Background())
	if code, out := cli("show", "--stream", "s1"); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("show a claim whose holder stopped: %d %s", code, out)
	}
	if code, out := cli("release", "--stream", "s1"); code != 0 || !strings.Contains(out, "released stream s1") {
		t.Fatalf("release: %d %s", code, out)
	}
	if code, out := cli("show", "--stream", "s1"); code == 0 || !strings.Contains(out, "no claim") {
		t.Fatalf("show after release: %d %s", code, out)
	}
	if code, _ := cli("release", "--stream", "bad id"); code != 2 {
		t.Fatalf("a bad stream id: exit %d, want 2", code)
	}
}
