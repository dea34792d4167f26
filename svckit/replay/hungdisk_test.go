package replay

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/retainlog"
)

// hangFS is the OS's filesystem whose fsyncs (of files and directories)
// wait for release once hang is set: a disk that stopped answering.
type hangFS struct {
	durable.FS
	hang    atomic.Bool
	release chan struct{}
}

func (h *hangFS) wait() {
	if h.hang.Load() {
		<-h.release
	}
}

func (h *hangFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	f, err := h.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return hangFile{f, h}, nil
}

func (h *hangFS) SyncDir(name string) error { h.wait(); return h.FS.SyncDir(name) }

type hangFile struct {
	durable.File
	h *hangFS
}

func (f hangFile) Sync() error { f.h.wait(); return f.File.Sync() }

// TestOwnerCloseReturnsOnHungDisk: Close returns by its context's end
// although the disk stopped answering fsyncs, saying why; once the disk
// answers, the Publish that waited for it returns, and the owner opens
// again on what was left, past every sequence it assigned.
func TestOwnerCloseReturnsOnHungDisk(t *testing.T) {
	dir := t.TempDir()
	hfs := &hangFS{FS: durable.OS(), release: make(chan struct{})}
	lo := retainlog.DefaultOptions("")
	o, err := OpenOwner(OwnerOptions{Stream: "s", Dir: dir, Log: lo, FS: hfs}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	last, err := o.Publish(ctx, []byte("durable"), "")
	if err != nil {
		t.Fatal(err)
	}
	hfs.hang.Store(true)
	// An append whose fsync never comes: Publish waits for it (once
	// appended, its message will be published; it does not say otherwise
	// by giving up).
	published := make(chan uint64, 1)
	go func() { seq, _ := o.Publish(ctx, []byte("appended, not yet durable"), ""); published <- seq }()
	for deadline := time.Now().Add(10 * time.Second); o.Log().LastSeq() != last+1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second Publish never appended")
		}
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	err = o.Close(cctx)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Close took %s on a hung disk, with a 1s context", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close on a hung disk: %v, want it to say its context ended", err)
	}
	close(hfs.release)
	// It may say the owner closed meanwhile, but with its sequence: the
	// message is in the log.
	if seq := <-published; seq != last+1 {
		t.Fatalf("the Publish waiting for the hung disk returned sequence %d, want %d (in the log)", seq, last+1)
	}
	again, err := OpenOwner(OwnerOptions{Stream: "s", Dir: dir, Log: lo}, ackAll{})
	if err != nil {
		t.Fatalf("opening again after a close on a hung disk: %v", err)
	}
	defer again.Close(ctx)
	next, err := again.Publish(ctx, []byte("after"), "")
	if err != nil || next <= last+1 {
		t.Fatalf("after the hung close the next sequence is %d (%v), want past %d", next, err, last+1)
	}
}

// TestOwnerCloseSavesAfterItsContextEnded: a context used up before Close
// (by a publisher waiting for a hung nsqd, say) does not cost a healthy
// disk its final save: snapshot.json covers every message published.
func TestOwnerCloseSavesAfterItsContextEnded(t *testing.T) {
	dir := t.TempDir()
	o, err := OpenOwner(OwnerOptions{Stream: "s", Dir: dir, Log: retainlog.DefaultOptions(""), Fold: &pipeline.ReadingFold{}, SnapshotInterval: time.Hour}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	var last uint64
	for v := int64(1); v <= 10; v++ {
		if last, err = o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: v}), ""); err != nil {
			t.Fatal(err)
		}
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := o.Close(ended); err != nil {
		t.Fatalf("Close with an ended context on a healthy disk: %v", err)
	}
	snap, err := readSnapshot(durable.OS(), filepath.Join(dir, "snapshot.json"))
	if err != nil || snap == nil || snap.Seq != last {
		t.Fatalf("snapshot.json after Close: %+v, %v; want it at %d", snap, err, last)
	}
}
