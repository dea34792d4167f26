package faulttest

import (
	"fmt"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/svckit/testenv"
)

// reRegisterNSQ registers nsqd and nsqlookupd in a Consul agent that forgot
// them, as an operator's agent configuration (etc/consul/nsq.hcl) would.
func (r *rig) reRegisterNSQ() {
	r.t.Helper()
	testenv.RegisterNSQLookupd(r.t, r.consul, r.lookupd)
	for _, n := range r.nsqds {
		testenv.RegisterNSQD(r.t, r.consul, n)
	}
}

// waitRegistered waits until every service is passing in Consul again (and,
// with readyToo, reports consul_registration ok on /ready), and returns when
// each was first seen so, counted from since. The services are watched
// together, so each time is its own.
func (r *rig) waitRegistered(since time.Time, readyToo bool) (map[string]time.Duration, time.Duration) {
	r.t.Helper()
	seen := map[string]time.Duration{}
	svcs := r.services()
	testenv.WaitFor(r.t, stepTimeout, "every service registered and passing in consul again", func() bool {
		for _, s := range svcs {
			if _, ok := seen[s.id]; ok {
				continue
			}
			addr := pipetest.PassingAddr(r.consul, s.bin, s.id)
			if addr == "" {
				continue
			}
			if readyToo {
				rd, err := pipetest.Ready(addr)
				if err != nil || !rd.CheckOK("consul_registration") {
					continue
				}
			}
			seen[s.id] = time.Since(since)
		}
		return len(seen) == len(svcs)
	})
	var slowest time.Duration
	for _, d := range seen {
		slowest = max(slowest, d)
	}
	return seen, slowest
}

func fmtDurations(m map[string]time.Duration) string {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b strings.Builder
	for i, id := range ids {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s", id, m[id].Round(10*time.Millisecond))
	}
	return b.String()
}

// stillRunning fails the test if a service exited or was restarted.
func (r *rig) stillRunning() {
	r.t.Helper()
	for _, s := range r.services() {
		if !s.proc.Running() || s.runs != 1 {
			r.t.Fatalf("%s did not keep running (exit code %d):\n%s", s.id, s.proc.ExitCode(), tail(s.proc.Log()))
		}
	}
}

// Case 1: the Consul agent is SIGKILLed and started again on the same ports.
// A dev agent forgets every registration; the operator's configuration
// registers nsqd and nsqlookupd again, and every service must notice it was
// forgotten and register itself again within seconds, without restarting.
func TestConsulKilled(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{})
	before := r.appStream().Applied

	r.consul.Kill()
	killed := time.Now()
	r.consul.Start(t)
	up := time.Now()
	exact := r.watchExact(up)
	r.reRegisterNSQ()
	t.Logf("consul SIGKILLed and back on the same ports after %s (it knows no service)", up.Sub(killed).Round(10*time.Millisecond))

	each, slowest := r.waitRegistered(up, false)
	t.Logf("registered and passing again after the agent's return: %s", fmtDurations(each))
	r.stillRunning()
	after := r.appStream().Applied
	if after <= before {
		t.Fatalf("the app applied nothing across the consul restart (%d then %d)", before, after)
	}
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("agent down %s; all 4 services passing again %s after its return (%s)",
		up.Sub(killed).Round(10*time.Millisecond), slowest.Round(10*time.Millisecond), fmtDurations(each)))
}

// Case 2: the Consul agent is stopped for a minute. The services keep running
// and the pipeline keeps flowing on cached addresses: what the sensor
// publishes during the outage reaches the app during the outage (the sensor
// publishes only while it holds its stream's claim, so it stops within the
// claim's TTL, 10 s, and goes on once the agent is back: see flow_test.go);
// /ready reports the registration (and discovery) not ok; within seconds of
// the agent's return every service is registered and ready again.
func TestConsulStoppedForAMinute(t *testing.T) {
	t.Parallel()
	const outage = time.Minute // the "for a minute": kept in the default suite
	r := newRig(t, rigOptions{})

	if err := r.consul.Stop(); err != nil {
		t.Fatalf("stopping consul: %v", err)
	}
	down := time.Now()
	ends := r.appEnds()
	from := ends.seqNow(t) // the sensor's last_seq as the outage begins
	// Addresses found before the outage (s.at) are all the test can use now.
	var notOK map[string][]string
	testenv.WaitFor(t, stepTimeout, "every service to report consul_registration not ok on /ready", func() bool {
		notOK = map[string][]string{}
		for _, s := range r.services() {
			rd, err := pipetest.Ready(s.at)
			if err != nil {
				return false
			}
			if _, has := rd.Checks["consul_registration"]; !has || rd.CheckOK("consul_registration") || rd.Ready {
				return false
			}
			for name, c := range rd.Checks {
				if !c.OK {
					notOK[s.id] = append(notOK[s.id], name)
				}
			}
			sort.Strings(notOK[s.id])
		}
		return true
	})
	notReadyAfter := time.Since(down)
	t.Logf("all services not ready %s after the agent stopped; failing checks: %v", notReadyAfter.Round(10*time.Millisecond), notOK)
	a1, err := pipetest.AppStreamOf(r.app.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	mid := time.Now()

	back := down.Add(outage)
	hold(time.Until(down.Add(outage / 2))) // the outage's first half; the second is checked
	fl := ends.flowsDuring(t, "consul is stopped", from, back)
	hold(time.Until(back)) // the rest of the outage

	a2, err := pipetest.AppStreamOf(r.app.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	held := time.Since(mid)
	for _, s := range r.services() {
		rd, err := pipetest.Ready(s.at)
		if err != nil || rd.CheckOK("consul_registration") {
			t.Fatalf("%s at the end of the outage: /ready %+v, %v; want consul_registration not ok", s.id, rd, err)
		}
	}
	r.stillRunning()
	t.Logf("during the last %s of the outage: sensor published %d, app applied %d (gaps %v)",
		held.Round(time.Second), s2.LastSeq-s1.LastSeq, a2.Applied-a1.Applied, a2.Gaps)

	r.consul.Start(t)
	up := time.Now()
	exact := r.watchExact(up)
	r.reRegisterNSQ()
	each, slowest := r.waitRegistered(up, true)
	t.Logf("registered, passing and ready again after the agent's return: %s", fmtDurations(each))
	r.stillRunning()
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("agent stopped %s; not ready after %s; during the outage sensor +%d, app +%d in %s, kept flowing (%v); registered+ready again %s after its return (%s)",
		up.Sub(down).Round(time.Second), notReadyAfter.Round(10*time.Millisecond), s2.LastSeq-s1.LastSeq, a2.Applied-a1.Applied,
		held.Round(time.Second), fl, slowest.Round(10*time.Millisecond), fmtDurations(each)))
}

// Case 2b: the Consul agent hangs (SIGSTOP) for a while: it accepts
// connections (the kernel does) but answers nothing. The services must keep
// working on cached addresses (what the sensor publishes meanwhile reaches
// the app) and report their registration not ready, as when the agent is
// stopped; after SIGCONT all is as before.
func TestConsulAgentHung(t *testing.T) {
	t.Parallel()
	frozen := holdFor(20*time.Second, 60*time.Second)
	r := newRig(t, rigOptions{})
	pid := r.consul.Proc.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// Resumed in any case, so that cleanups can stop it.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	ends := r.appEnds()
	from := ends.seqNow(t) // the sensor's last_seq as the agent hangs
	a0, err := pipetest.AppStreamOf(r.app.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	// Every service should notice within its verify interval (2 s) plus
	// the Consul client's timeout; the hold gives it all of frozen.
	resume := stopped.Add(frozen)
	hold(time.Until(stopped.Add(frozen / 2))) // the first half; the second is checked
	fl := ends.flowsDuring(t, "consul hangs", from, resume)
	hold(time.Until(resume)) // the rest
	a1, err := pipetest.AppStreamOf(r.app.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	var stale []string
	for _, s := range r.services() {
		rd, err := pipetest.Ready(s.at)
		if err != nil {
			t.Fatalf("%s /ready while consul hangs: %v", s.id, err)
		}
		if rd.CheckOK("consul_registration") {
			stale = append(stale, s.id)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	exact := r.watchExact(resumed)
	each, slowest := r.waitRegistered(resumed, true)
	r.stillRunning()
	res := result{timeToExact: exact.wait()}
	r.finish(res, fmt.Sprintf("agent SIGSTOPped %s; app +%d meanwhile, kept flowing (%v); services still reporting consul_registration ok at the end: %v; all passing and ready %s after SIGCONT (%s)",
		resumed.Sub(stopped).Round(time.Second), a1.Applied-a0.Applied, fl, stale, slowest.Round(10*time.Millisecond), fmtDurations(each)))
	if len(stale) > 0 {
		t.Fatalf("regression of the fixed bug in svckit/registry Registrar.ensure (and svckit/discovery Watcher.run, svckit/config Config.ConsulAPI): "+
			"Consul requests have no deadline, so against a hung agent the registrar's verify call blocks forever and /ready keeps "+
			"reporting consul_registration ok (%v after %s); fix: bound every non-blocking Consul call with a context timeout "+
			"(e.g. 5 s) and blocking queries with WaitTime plus a margin", stale, frozen)
	}
}
