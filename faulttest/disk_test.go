package faulttest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/testenv"
)

// Issue #22: the owner's disk misbehaves. Case 23 damages records of the
// sensor's retained log at rest (bit rot); case 24 runs the sensor's disk
// full under load.

// Case 23: bit rot in the retained log. The sensor keeps its log in 16 KiB
// segments (several sealed ones plus the active one) with a retention that
// deletes nothing during the case. Four times, one after the other on the
// same rig, for four positions of the damage:
//
//   - the middle of a record's body in a sealed segment,
//   - the middle of a record's body in the active segment,
//   - the record's length field in a sealed segment (±4 bytes: the next
//     record no longer starts where the length says),
//   - the record's length field in the active segment (+64 KiB: the length
//     points past the end of the file, as a torn tail's would, although
//     intact records follow),
//
// the app is stopped (its channel is ephemeral: what is published meanwhile
// can only come back by replay, relayed by the workers from the sensor),
// the sensor publishes three more seconds and is stopped (SIGTERM), and one
// bit is flipped in one record the app has not applied. Then the sensor is
// started again, and then the app.
//
// What must hold: the sensor starts; no segment file is shorter than before
// the flip (nothing truncated or deleted); its GET /replay over a range
// holding the damage serves every other record and names the damaged
// sequences in the trailer Svckit-Damaged; its GET /streams entry lists
// exactly the damaged sequences (one record per flipped bit, also for a
// length field: the record after it is intact and found again) in
// "damaged", and svckit_retainlog_damaged_records counts them; a copy of the
// damaged bytes is in <log dir>/quarantine/; the sensor goes on publishing
// with new sequence numbers; and the app ends exact (the damaged reading
// reaches it through the sensor's snapshot, which the relay path asks for),
// with the sensor's fold.
func TestBitRotInRetainedLog(t *testing.T) {
	t.Parallel()
	r := newRig(t, rigOptions{sensorArgs: []string{
		"--log-segment-bytes=16384",
		// Far more than the case publishes (about 200 readings/s for two
		// minutes, a few MB): retention deletes nothing.
		"--retain-messages=1000000", "--retain-bytes=1073741824", "--retain-age=0",
	}})
	n := r.nsqds[0]
	logDir := filepath.Join(r.sensor.dataDir, "streams", r.stream, "log")
	sizes := map[string]int64{} // every segment's size before a flip (the largest seen)
	var damaged []uint64        // every damaged sequence so far, sorted
	var notes []string
	var slowest time.Duration

	for _, p := range []rotPosition{
		{name: "sealed segment, body", mask: 0x10},
		{name: "active segment, body", active: true, mask: 0x10},
		{name: "sealed segment, length field (±4)", length: true, byteAt: 3, mask: 0x04},
		{name: "active segment, length field (+64 KiB, past the end of the file)", active: true, length: true, byteAt: 1, mask: 0x01},
	} {
		r.waitApplied(r.appStream().Applied + rate) // a second of load
		// The app goes away; what is published from now on reaches it
		// only by replay.
		r.app.stop()
		appHas := checkpointLast(t, r.app.dataDir, r.stream)
		testenv.WaitFor(t, stepTimeout, "the app's ephemeral channel to disappear from nsqd", func() bool {
			_, ok := channelStats(n, pipeline.ResultsTopic, "app-*")
			return !ok
		})
		l0 := r.lastSeq()
		testenv.WaitFor(t, stepTimeout, "the sensor to publish three seconds more with the app away", func() bool { return r.lastSeq() >= l0+3*rate })

		// The sensor stops cleanly; pick the record to damage. The active
		// segment needs a record with an intact one after it: should the
		// stop come right after a roll, the sensor runs a moment more.
		var segs []logSegment
		for try := 0; ; try++ {
			r.sensor.stop()
			segs = readLogSegments(t, logDir)
			if !p.active || len(segs[len(segs)-1].recs) >= 3 {
				break
			}
			if try == 3 {
				t.Fatalf("%s: the active segment holds fewer than 3 records after %d stops: %+v", p.name, try+1, segs[len(segs)-1])
			}
			r.sensor.start()
			r.sensor.addr()
			l := r.sensorLast()
			testenv.WaitFor(t, stepTimeout, "the sensor to publish a moment more", func() bool { return r.sensorLast() >= l+rate/4 })
		}
		stopped := savedSnapshotSeq(t, r.sensor.dataDir, r.stream)
		seg, rec := pickRecord(t, p, segs, appHas)
		off := rec.off + 8 + rec.bodyLen/2 // the middle of the body
		if p.length {
			off = rec.off + int64(p.byteAt)
		}
		for _, s := range segs {
			// Records only: a roll cuts the zeros after them.
			sizes[s.name] = max(sizes[s.name], s.data)
		}
		flipBit(t, seg.path, off, p.mask)
		window := fileWindow(t, seg.path, max(off-8, rec.off), min(off+8, rec.off+8+rec.bodyLen))
		damaged = append(damaged, rec.seq)
		slices.Sort(damaged)
		t.Logf("%s: flipped bit %#02x at offset %d of %s (record seq %d at offset %d, body %d bytes; %d records in the segment; %d segments); the app has up to %d, the sensor stopped at %d",
			p.name, p.mask, off, seg.name, rec.seq, rec.off, rec.bodyLen, len(seg.recs), len(segs), appHas, stopped)

		// The sensor starts on its damaged log.
		addr := startSensor(r)
		st, err := ownerStatusOf(addr, r.stream)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		if st.LastSeq < stopped {
			t.Fatalf("%s: the sensor stopped at seq %d; started again on the damaged log it ends at %d", p.name, stopped, st.LastSeq)
		}
		checkNotShorter(t, p.name+", after the start", logDir, sizes)
		testenv.WaitFor(t, stepTimeout, "the sensor to publish new readings", func() bool { return r.sensorLast() > stopped })

		// /streams names the damage, and so does the metric, before anyone
		// read the damaged record (the app is away, the pump publishes only
		// what nsqd did not acknowledge): found at start, by the scrubber
		// for a sealed segment, by Open's scan for the active one.
		var last ownerStatus
		if !testenv.Eventually(stepTimeout, func() bool {
			last, err = ownerStatusOf(addr, r.stream)
			got, xerr := expandRanges(last.Damaged)
			return err == nil && xerr == nil && slices.Equal(got, damaged)
		}) {
			t.Fatalf("%s: the sensor's /streams entry %+v (error %v): want \"damaged\" to name exactly %v", p.name, last, err, damaged)
		}
		var gauge float64
		var found bool
		if !testenv.Eventually(stepTimeout, func() bool {
			gauge, found, err = pipetest.StreamMetric(addr, "svckit_retainlog_damaged_records", r.stream)
			return err == nil && found && gauge == float64(len(damaged))
		}) {
			t.Fatalf("%s: svckit_retainlog_damaged_records{stream=%q} = %v (present %v, error %v), want %d", p.name, r.stream, gauge, found, err, len(damaged))
		}
		// Its own /replay over every damage so far.
		st, err = ownerStatusOf(addr, r.stream)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		from, to := max(damaged[0], st.RetainedFirst+3, 4)-3, min(damaged[len(damaged)-1]+3, st.LastSeq)
		checkReplayAroundDamage(t, p.name, addr, r.stream, from, to, damaged)

		q := checkQuarantine(t, p.name, logDir, window)
		// The operator sees it too: /ready's detail and svckit stream show.
		wantCount := fmt.Sprintf("%d damaged records", len(damaged))
		if rd, err := pipetest.Ready(addr); err != nil || !strings.Contains(rd.Checks["stream "+r.stream+" log"].Detail, wantCount) {
			t.Fatalf("%s: /ready %+v (%v): want the check %q to carry a detail with %q", p.name, rd, err, "stream "+r.stream+" log", wantCount)
		}
		show := exec.Command(testenv.Bin(t, "svckit"), "stream", "show", "--stream", r.stream)
		show.Env = append(os.Environ(), "CONSUL_HTTP_ADDR="+r.consul.HTTPAddr)
		if out, err := show.CombinedOutput(); err != nil || !strings.Contains(string(out), fmt.Sprintf("damaged: %d records", len(damaged))) {
			t.Fatalf("%s: svckit stream show: %v\n%s\nwant it to name %d damaged records", p.name, err, out, len(damaged))
		}
		// The app comes back and must end exact.
		r.app.restart()
		back := time.Now()
		took := r.watchExact(back).wait()
		slowest = max(slowest, took)
		recoveries := metric(t, r.app.at, "svckit_snapshot_recoveries_total")
		if !r.sensor.proc.Running() {
			t.Fatalf("%s: the sensor exited (code %d)", p.name, r.sensor.proc.ExitCode())
		}
		checkNotShorter(t, p.name+", after the app caught up", logDir, sizes)
		notes = append(notes, fmt.Sprintf("%s: seq %d damaged, exact %s after the app's start, %.0f snapshot recoveries, %d files in quarantine",
			p.name, rec.seq, took.Round(10*time.Millisecond), recoveries, q))
	}

	res := result{timeToExact: slowest}
	r.finish(res, fmt.Sprintf("bit rot in the sensor's retained log (16 KiB segments), damaged seqs %v; the slowest position's time to exact is the one above; %s",
		damaged, strings.Join(notes, "; ")))
	checkNotShorter(t, "at the end", logDir, sizes)
}

// startSensor starts the sensor again and waits until it is passing,
// failing at once if it exits (refuses its data) instead.
func startSensor(r *rig) string {
	r.t.Helper()
	r.sensor.start()
	r.sensor.at = pipetest.AddrOfProcess(r.t, r.consul, r.sensor.proc, "sensor", r.sensor.id)
	return r.sensor.at
}

// rotPosition is where case 23 flips a bit.
type rotPosition struct {
	name   string
	active bool // in the active (last) segment, else in a sealed one
	length bool // in the record's length field (byte byteAt of 0-3), else in the middle of its body
	byteAt int
	mask   byte
}

// pickRecord chooses the record to damage: one the app has not applied
// (seq > appHas), in the middle of a sealed segment holding only such
// records, or in the active segment with an intact record after it.
func pickRecord(t *testing.T, p rotPosition, segs []logSegment, appHas uint64) (logSegment, logRec) {
	t.Helper()
	if p.active {
		a := segs[len(segs)-1]
		if a.bad != "" {
			t.Fatalf("%s: the active segment %s does not parse before the flip: %s", p.name, a.name, a.bad)
		}
		var ok []logRec
		for _, rec := range a.recs[:len(a.recs)-1] {
			if rec.seq > appHas {
				ok = append(ok, rec)
			}
		}
		if len(ok) == 0 {
			t.Fatalf("%s: no record of the active segment %s (seqs %d..%d) is beyond what the app has (%d) and followed by another", p.name, a.name, a.recs[0].seq, a.recs[len(a.recs)-1].seq, appHas)
		}
		return a, ok[len(ok)/2]
	}
	var cands []logSegment
	for _, s := range segs[:len(segs)-1] {
		if s.bad == "" && len(s.recs) >= 3 && s.recs[0].seq > appHas {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		t.Fatalf("%s: no sealed segment holds only records beyond what the app has (%d); segments: %v", p.name, appHas, segmentNames(segs))
	}
	s := cands[len(cands)/2]
	return s, s.recs[len(s.recs)/2]
}

// Case 24: the sensor's disk fills up under load. Its data directory is on
// a 4 MiB tmpfs; the case fills the rest of it with a file of its own until
// ENOSPC while the sensor publishes 200 readings/s (its retention, 1 MiB,
// would have kept it under the limit). What must hold: the sensor does not
// exit; its /ready answers 503 with a check saying "no space left on
// device"; svckit_owner_write_failures_total counts the failed writes; its
// /replay still serves and the app gets everything published before. Then
// the space comes back (the file deleted, the tmpfs grown to 64 MiB) and the
// sensor publishes again by itself, same process, /ready 200. Stopped at
// the end, it leaves the app exact.
func TestDiskFullSensorPauses(t *testing.T) {
	t.Parallel()
	disk := mountTmpfs(t, "4m")
	sensorDir := filepath.Join(disk, "sensor-1")
	r := newRig(t, rigOptions{sensorArgs: []string{
		"--data-dir=" + sensorDir, // wins over the rig's (later flags win)
		"--log-segment-bytes=65536", "--retain-bytes=1048576", "--retain-messages=0",
	}})
	r.sensor.dataDir = sensorDir // where finish reads the sensor's saved snapshot
	pid := r.sensor.proc.Pid()
	r.waitApplied(r.appStream().Applied + rate) // a second of load
	before := r.sensorLast()

	filler := filepath.Join(disk, "filler")
	filled := fillDisk(t, filler)
	full := time.Now()
	var rd pipetest.Readiness
	var code int
	var err error
	if !testenv.Eventually(stepTimeout, func() bool {
		if !r.sensor.proc.Running() {
			return true // reported below
		}
		code, rd, err = readiness(r.sensor.at)
		return err == nil && code == http.StatusServiceUnavailable && noSpaceCheck(rd) != ""
	}) || !r.sensor.proc.Running() {
		if !r.sensor.proc.Running() {
			t.Fatalf("the sensor exited (code %d) when its disk filled up (a %d-byte filler beside it, last_seq %d before):\n%s", r.sensor.proc.ExitCode(), filled, before, tail(r.sensor.proc.Log()))
		}
		t.Fatalf("with its disk full (a %d-byte filler beside it, last_seq %d before), the sensor's /ready answers %d %+v (error %v; running %v), want 503 with a check saying \"no space left\"",
			filled, before, code, rd, err, r.sensor.proc.Running())
	}
	notReady := time.Since(full)
	check := noSpaceCheck(rd)
	var failures float64
	var found bool
	if !testenv.Eventually(stepTimeout, func() bool {
		failures, found, err = pipetest.StreamMetric(r.sensor.at, "svckit_owner_write_failures_total", r.stream)
		return err == nil && found && failures > 0
	}) {
		t.Fatalf("svckit_owner_write_failures_total{stream=%q} = %v (present %v, error %v), want > 0 with the disk full", r.stream, failures, found, err)
	}
	paused := r.sensorLast()
	// A hold: the disk stays full for a while; the sensor must stay up.
	held := holdFor(5*time.Second, 30*time.Second)
	hold(held)
	if !r.sensor.proc.Running() || r.sensor.proc.Pid() != pid {
		t.Fatalf("the sensor exited with its disk full (code %d):\n%s", r.sensor.proc.ExitCode(), tail(r.sensor.proc.Log()))
	}
	pausedEnd := r.sensorLast()
	if code, rd, err = readiness(r.sensor.at); err != nil || code != http.StatusServiceUnavailable || noSpaceCheck(rd) == "" {
		t.Fatalf("after %s with the disk full the sensor's /ready answers %d %+v (error %v), want 503 with a check saying \"no space left\"", held, code, rd, err)
	}
	// What was published before the disk filled up is served and applied.
	var st pipetest.AppStream
	if !testenv.Eventually(stepTimeout, func() bool {
		st, err = pipetest.AppStreamOf(r.app.at, r.stream)
		return err == nil && st.LastContiguous >= pausedEnd && len(st.Gaps) == 0
	}) {
		t.Fatalf("with the sensor's disk full the app did not get all of 1..%d (what the sensor showed): %v (error %v)", pausedEnd, st, err)
	}
	sst, err := pipetest.SensorStreamOf(r.sensor.at, r.stream)
	if err != nil {
		t.Fatal(err)
	}
	from := max(sst.RetainedFirst, pausedEnd-99, 1)
	a, err := replayFrames(r.sensor.at, r.stream, from, pausedEnd)
	if err != nil || a.status != http.StatusOK || a.contentType != replay.FramesContentType || !contiguous(a.seqs, from, pausedEnd) || a.trailer != "" {
		t.Fatalf("with its disk full the sensor's /replay of %d..%d answers %s (error %v), want every record and no damage", from, pausedEnd, a, err)
	}

	// The space comes back.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", disk).CombinedOutput(); err != nil {
		t.Fatalf("growing the tmpfs at %s: %v: %s", disk, err, out)
	}
	freed := time.Now()
	testenv.WaitFor(t, stepTimeout, "the sensor to publish again by itself once the space came back", func() bool { return r.sensorLast() > pausedEnd })
	resumed := time.Since(freed)
	if !r.sensor.proc.Running() || r.sensor.proc.Pid() != pid || r.sensor.runs != 1 {
		t.Fatalf("the sensor is not the process it was (pid %d, now %d, running %v, runs %d)", pid, r.sensor.proc.Pid(), r.sensor.proc.Running(), r.sensor.runs)
	}
	// Time to exact: from the space coming back to the app holding what
	// the sensor had published by the time it was seen publishing again.
	exact := r.watchExact(freed)
	if !testenv.Eventually(stepTimeout, func() bool {
		code, rd, err = readiness(r.sensor.at)
		return err == nil && code == http.StatusOK && rd.Ready
	}) {
		t.Fatalf("with space again the sensor's /ready answers %d %+v (error %v), want 200", code, rd, err)
	}
	res := result{timeToExact: exact.wait()}
	after := r.sensorLast() - pausedEnd // and a few more until finish stops it
	r.finish(res, fmt.Sprintf("sensor's data on a 4 MiB tmpfs filled up under load (filler %d bytes) at last_seq %d: /ready 503 %s later (check %q), %.0f write failures, last_seq %d..%d while full (held %s), same process throughout (pid %d); space back after %s full, publishing again %s later, /ready 200; readings published before the pause %d, after it >= %d",
		filled, before, notReady.Round(10*time.Millisecond), check, failures, paused, pausedEnd, held, pid,
		freed.Sub(full).Round(100*time.Millisecond), resumed.Round(10*time.Millisecond), pausedEnd, after))
}

// mountTmpfs mounts a tmpfs of size (mount's size= option) on a new temp
// dir, or skips where it cannot (fails in CI: skip.CannotRun). It is
// unmounted after the services are killed (cleanups run last-in first-out).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		skip.CannotRun(t, "disk-full case skipped: mounting a tmpfs (size %s) on %s: %v: %s", size, dir, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("unmounting %s: %v: %s", dir, err, strings.TrimSpace(string(out)))
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// fillDisk writes path until the filesystem has no space left and returns
// how many bytes it holds.
func fillDisk(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xa5}, 64<<10)
	var n int64
	for {
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatalf("filling %s: %v", path, err)
		}
	}
}

// readiness is a service's GET /ready: status code and checks.
func readiness(addr string) (int, pipetest.Readiness, error) {
	var rd pipetest.Readiness
	code, body, err := testenv.HTTPGet("http://" + addr + "/ready")
	if err != nil {
		return 0, rd, err
	}
	if err := json.Unmarshal([]byte(body), &rd); err != nil {
		return code, rd, fmt.Errorf("GET %s/ready: %d %q: %w", addr, code, body, err)
	}
	return code, rd, nil
}

// noSpaceCheck returns the name of a failing check whose error says the
// disk is full, or "".
func noSpaceCheck(rd pipetest.Readiness) string {
	for name, c := range rd.Checks {
		if !c.OK && strings.Contains(c.Error, "no space left") {
			return name
		}
	}
	return ""
}

// ownerStatus is an owner's (the sensor's) GET /streams entry with the
// damaged sequences of its retained log.
type ownerStatus struct {
	Stream        string      `json:"stream"`
	LastSeq       uint64      `json:"last_seq"`
	RetainedFirst uint64      `json:"retained_first"`
	RetainedLast  uint64      `json:"retained_last"`
	Damaged       [][2]uint64 `json:"damaged"`
}

func ownerStatusOf(addr, stream string) (ownerStatus, error) {
	var ss []ownerStatus
	if err := pipetest.GetJSON(addr, "/streams", &ss); err != nil {
		return ownerStatus{}, err
	}
	for _, s := range ss {
		if s.Stream == stream {
			return s, nil
		}
	}
	return ownerStatus{}, fmt.Errorf("sensor %s does not list stream %q", addr, stream)
}

// logRec is a record found in a segment file.
type logRec struct {
	seq     uint64
	off     int64 // where its header starts
	bodyLen int64
}

// logSegment is a segment file of a retained log as read from disk (see
// svckit/retainlog/doc.go for the format).
type logSegment struct {
	name, path string
	size       int64
	data       int64    // size without the preallocated zeros after the records
	recs       []logRec // the valid records from its start
	bad        string   // why reading stopped before the end ("" if it did not)
}

func (s logSegment) String() string {
	first, last := uint64(0), uint64(0)
	if len(s.recs) > 0 {
		first, last = s.recs[0].seq, s.recs[len(s.recs)-1].seq
	}
	return fmt.Sprintf("%s (%d bytes, %d records %d..%d, bad %q)", s.name, s.size, len(s.recs), first, last, s.bad)
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// readLogSegments reads every segment of the log in logDir, oldest first.
func readLogSegments(t *testing.T, logDir string) []logSegment {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(logDir, "*.log"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no segment in %s (%v)", logDir, err)
	}
	slices.Sort(paths)
	segs := make([]logSegment, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := logSegment{name: filepath.Base(p), path: p, size: int64(len(b))}
		// The active segment ends in zeros the log preallocated: space,
		// not records, and not a reason the records stop.
		s.data = int64(len(bytes.TrimRight(b, "\x00")))
		for off := 0; off < int(s.data); {
			if len(b)-off < 8 {
				s.bad = fmt.Sprintf("short header at %d", off)
				break
			}
			n := int(binary.BigEndian.Uint32(b[off:]))
			if n < 16 || len(b)-off-8 < n {
				s.bad = fmt.Sprintf("length %d at %d", n, off)
				break
			}
			body := b[off+8 : off+8+n]
			if crc32.Checksum(body, crc32c) != binary.BigEndian.Uint32(b[off+4:]) {
				s.bad = fmt.Sprintf("crc mismatch at %d", off)
				break
			}
			seq := binary.BigEndian.Uint64(body)
			if k := len(s.recs); k > 0 && seq != s.recs[k-1].seq+1 {
				s.bad = fmt.Sprintf("seq %d after %d at %d", seq, s.recs[k-1].seq, off)
				break
			}
			s.recs = append(s.recs, logRec{seq: seq, off: int64(off), bodyLen: int64(n)})
			off += 8 + n
		}
		segs = append(segs, s)
	}
	return segs
}

func segmentNames(segs []logSegment) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.String()
	}
	return out
}

// flipBit flips the bits of mask in the byte at off of path (and fsyncs).
func flipBit(t *testing.T, path string, off int64, mask byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.ReadAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= mask
	if _, err := f.WriteAt(b[:], off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// fileWindow returns bytes [from, to) of path.
func fileWindow(t *testing.T, path string, from, to int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, to-from)
	if _, err := f.ReadAt(b, from); err != nil {
		t.Fatal(err)
	}
	return b
}

// checkNotShorter fails the test if a segment whose size was recorded is
// gone or shorter now.
func checkNotShorter(t *testing.T, when, logDir string, sizes map[string]int64) {
	t.Helper()
	var bad []string
	for name, was := range sizes {
		fi, err := os.Stat(filepath.Join(logDir, name))
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s (%d bytes): %v", name, was, err))
		case fi.Size() < was:
			bad = append(bad, fmt.Sprintf("%s: %d bytes, was %d", name, fi.Size(), was))
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		t.Fatalf("%s: segments of the retained log were truncated or removed: %v", when, bad)
	}
}

// checkQuarantine waits until a file under <logDir>/quarantine holds the
// damaged bytes (window: the bytes around the flipped bit, as they are on
// disk after the flip), failing the test after stepTimeout. It returns how
// many non-empty files the directory holds.
func checkQuarantine(t *testing.T, when, logDir string, window []byte) int {
	t.Helper()
	dir := filepath.Join(logDir, "quarantine")
	var files []string
	var err error
	kept := testenv.Eventually(stepTimeout, func() bool {
		files = files[:0]
		var entries []os.DirEntry
		if entries, err = os.ReadDir(dir); err != nil {
			return false
		}
		found := false
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			b, rerr := os.ReadFile(filepath.Join(dir, e.Name()))
			if rerr != nil || len(b) == 0 {
				continue
			}
			files = append(files, fmt.Sprintf("%s (%d bytes)", e.Name(), len(b)))
			found = found || bytes.Contains(b, window)
		}
		return found
	})
	if !kept {
		t.Fatalf("%s: no file under %s holds the damaged bytes (%x around the flipped bit): non-empty files %v (error %v)", when, dir, window, files, err)
	}
	return len(files)
}

// replayAnswer is what an owner's GET /replay answered.
type replayAnswer struct {
	status      int
	contentType string
	seqs        []uint64 // the frames' sequence numbers, in order
	trailer     string   // Svckit-Damaged
	body        string   // if status is not 200
}

func (a replayAnswer) String() string {
	s := fmt.Sprintf("HTTP %d, Content-Type %q, Svckit-Damaged %q, %d frames", a.status, a.contentType, a.trailer, len(a.seqs))
	if len(a.seqs) > 0 {
		s += fmt.Sprintf(" (%d..%d)", a.seqs[0], a.seqs[len(a.seqs)-1])
	}
	if a.body != "" {
		s += ": " + strings.TrimSpace(a.body)
	}
	return s
}

// replayFrames GETs stream's from..to from the owner at addr, reads the
// frames to the end and then the trailer.
func replayFrames(addr, stream string, from, to uint64) (replayAnswer, error) {
	c := &http.Client{Timeout: 30 * time.Second}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://%s/replay?stream=%s&from=%d&to=%d", addr, url.QueryEscape(stream), from, to), nil)
	if err != nil {
		return replayAnswer{}, err
	}
	// A client that reads the trailer says so (one that does not gets 410
	// for a range with known damage).
	req.Header.Set(replay.AcceptDamagedHeader, "1")
	resp, err := c.Do(req)
	if err != nil {
		return replayAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body) // to EOF: the trailer comes after the body
	a := replayAnswer{status: resp.StatusCode, contentType: resp.Header.Get("Content-Type"), trailer: resp.Trailer.Get("Svckit-Damaged")}
	if err != nil {
		return a, fmt.Errorf("reading the answer: %w", err)
	}
	if a.status != http.StatusOK {
		a.body = string(b)
		return a, nil
	}
	for len(b) > 0 {
		if len(b) < 4 {
			return a, fmt.Errorf("%d bytes after frame %d: short frame header", len(b), len(a.seqs))
		}
		n := int(binary.BigEndian.Uint32(b))
		if len(b)-4 < n {
			return a, fmt.Errorf("frame %d: length %d, %d bytes left", len(a.seqs), n, len(b)-4)
		}
		env, err := envelope.Decode(b[4 : 4+n])
		if err != nil {
			return a, fmt.Errorf("frame %d: %w", len(a.seqs), err)
		}
		a.seqs = append(a.seqs, env.Seq)
		b = b[4+n:]
	}
	return a, nil
}

// checkReplayAroundDamage checks the owner's /replay of from..to: every
// sequence but the damaged ones, in order, as frames, and the damaged ones
// in the trailer Svckit-Damaged.
func checkReplayAroundDamage(t *testing.T, when, addr, stream string, from, to uint64, damaged []uint64) {
	t.Helper()
	a, err := replayFrames(addr, stream, from, to)
	if err != nil {
		t.Fatalf("%s: the sensor's /replay of %d..%d: %v (%s)", when, from, to, err, a)
	}
	if a.status != http.StatusOK || a.contentType != replay.FramesContentType {
		t.Fatalf("%s: the sensor's /replay of %d..%d answers %s, want 200 with %s", when, from, to, a, replay.FramesContentType)
	}
	var want, dam []uint64
	for s := from; s <= to; s++ {
		if slices.Contains(damaged, s) {
			dam = append(dam, s)
		} else {
			want = append(want, s)
		}
	}
	if !slices.Equal(a.seqs, want) {
		missing, extra := setDiff(want, a.seqs), setDiff(a.seqs, want)
		t.Fatalf("%s: the sensor's /replay of %d..%d with %v damaged served %s: missing %v, not wanted %v (in order: %v)",
			when, from, to, dam, a, clip(missing), clip(extra), slices.IsSorted(a.seqs))
	}
	got, err := parseRanges(a.trailer)
	if err != nil || !slices.Equal(got, dam) {
		t.Fatalf("%s: the sensor's /replay of %d..%d has the trailer Svckit-Damaged %q (%v), want the damaged %v as first-last ranges", when, from, to, a.trailer, err, dam)
	}
}

// parseRanges reads "first-last[,first-last…]" into the sequences named.
func parseRanges(s string) ([]uint64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("empty")
	}
	var rs [][2]uint64
	for _, part := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		x, err1 := strconv.ParseUint(a, 10, 64)
		y, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("range %q is not first-last", part)
		}
		rs = append(rs, [2]uint64{x, y})
	}
	return expandRanges(rs)
}

// expandRanges lists the sequences of [first, last] ranges, sorted.
func expandRanges(rs [][2]uint64) ([]uint64, error) {
	var out []uint64
	for _, r := range rs {
		if r[0] == 0 || r[1] < r[0] || r[1]-r[0] > 1_000_000 {
			return nil, fmt.Errorf("range %v", r)
		}
		for s := r[0]; s <= r[1]; s++ {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out, nil
}

// setDiff is a minus b.
func setDiff(a, b []uint64) []uint64 {
	var out []uint64
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func clip(s []uint64) string {
	if len(s) > 20 {
		return fmt.Sprintf("%v … (%d in all)", s[:20], len(s))
	}
	return fmt.Sprint(s)
}

// contiguous reports whether seqs is exactly from..to.
func contiguous(seqs []uint64, from, to uint64) bool {
	if uint64(len(seqs)) != to-from+1 {
		return false
	}
	for i, s := range seqs {
		if s != from+uint64(i) {
			return false
		}
	}
	return true
}

// checkpointLast is the highest sequence of stream the app's checkpoint
// records as applied.
func checkpointLast(t *testing.T, appDataDir, stream string) uint64 {
	t.Helper()
	var last uint64
	for _, iv := range pipetest.CheckpointIntervals(t, appDataDir, stream) {
		last = max(last, iv[1])
	}
	return last
}
