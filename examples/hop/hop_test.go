package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svckit/svckit/examples/internal/extest"
	"github.com/svckit/svckit/svckit/testenv"
)

// bin/hop hops its messages through a real nsqd, writes its result and
// exits 0 (the bench reads the same file); bad flags exit 2.
func TestHop(t *testing.T) {
	bin := extest.Build(t, ".")
	st := testenv.StartStack(t)
	out := filepath.Join(t.TempDir(), "hop.json")
	p := extest.Start(t, st.Consul, "hop-1", bin, "--topic=hop-test", "--count=20000", "--json="+out)
	if code := extest.WaitExit(t, p); code != 0 {
		t.Fatalf("hop exited %d\n%s", code, p.Log())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res HopResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if res.Messages != 20000 || res.MsgsPerSec <= 0 || res.Seconds <= 0 || res.MsgsPerMPUB < 1 {
		t.Errorf("result %+v; want 20000 messages at a positive rate, at least 1 per MPUB", res)
	}
	// The same line on stdout, for a person running it.
	if !strings.Contains(p.Log(), strings.TrimSpace(string(b))) {
		t.Errorf("stdout lacks the result %s:\n%s", b, p.Log())
	}

	bad := extest.Start(t, st.Consul, "hop-2", bin, "--count=0")
	if code := extest.WaitExit(t, bad); code != 2 {
		t.Errorf("--count=0: exit %d, want 2\n%s", code, bad.Log())
	}
}
