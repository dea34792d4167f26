package retainlog

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/svckit/svckit/svckit/durable"
)

// Durability: fsyncs (shared by concurrent callers), the highest sequence
// known to be on stable storage, and waiting for it. A failed fsync is
// sticky.

// failSync makes a failed fsync sticky: after a failed fsync Linux may have
// dropped the dirty pages, so later fsyncs can succeed over lost data.
// Refusing further appends surfaces a failing disk instead of hiding it.
// Caller holds mu.
func (l *Log) failSync(s *segment, err error) error {
	l.err = fmt.Errorf("retainlog: fsync %s: %w", s.path, err)
	l.log.Error("retainlog: fsync failed; refusing further appends", "segment", s.path, "error", err)
	return l.err
}

// Sync fsyncs the active segment now, whatever the policy.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.err != nil {
		return l.err
	}
	act := l.active()
	if act == nil || act.f == nil {
		return nil
	}
	if err := act.f.Sync(); err != nil {
		return l.failSync(act, err)
	}
	l.fsyncs.Add(1)
	l.dirty = false
	l.raiseSynced(l.last.Load())
	return nil
}

// SyncTo returns once every record up to seq is on stable storage (a no-op
// under FsyncNever). Concurrent callers share fsyncs (group commit), and
// appends continue while one runs.
func (l *Log) SyncTo(seq uint64) error {
	if l.opts.Fsync == FsyncNever || l.synced.Load() >= seq {
		return nil
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	for l.synced.Load() < seq {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return ErrClosed
		}
		if l.err != nil {
			l.mu.Unlock()
			return l.err
		}
		act := l.active()
		if act == nil || act.f == nil {
			l.mu.Unlock()
			return fmt.Errorf("%w: sync to %d, log ends at %d", ErrBeyondEnd, seq, l.last.Load())
		}
		f, upTo := act.f, l.last.Load()
		if upTo < seq {
			l.mu.Unlock()
			return fmt.Errorf("%w: sync to %d, log ends at %d", ErrBeyondEnd, seq, upTo)
		}
		// Within preallocated space only data changed: fdatasync. A
		// failure below is sticky, so the flag need not come back.
		full := act.metaDirty
		act.metaDirty = false
		l.mu.Unlock()
		var err error
		if full {
			err = f.Sync()
		} else {
			err = durable.Datasync(f)
		}
		switch {
		case err == nil:
			l.fsyncs.Add(1)
			l.raiseSynced(upTo)
		case errors.Is(err, os.ErrClosed):
			// A roll or Close sealed f, fsyncing it first: look again.
		default:
			l.mu.Lock()
			err = l.failSync(act, err)
			l.mu.Unlock()
			return err
		}
	}
	return nil
}

// raiseSynced moves DurableSeq up to seq (never down: another fsync may
// have covered more meanwhile) and wakes WaitDurable.
func (l *Log) raiseSynced(seq uint64) {
	for {
		cur := l.synced.Load()
		if cur >= seq {
			return
		}
		if l.synced.CompareAndSwap(cur, seq) {
			break
		}
	}
	l.wake()
}

// wake makes WaitDurable's waiters look again: at a raised DurableSeq, or
// at an error that means the fsync they wait for will not come.
func (l *Log) wake() {
	l.syncedMu.Lock()
	close(l.syncedCh)
	l.syncedCh = make(chan struct{})
	l.syncedMu.Unlock()
}

// WaitDurable returns once every record up to seq is on stable storage, as
// the policy provides it: FsyncAlways fsyncs now (concurrent callers share
// one fsync), FsyncInterval waits for the background fsync, FsyncNever
// returns at once (nothing is ever known to be durable).
func (l *Log) WaitDurable(ctx context.Context, seq uint64) error {
	switch l.opts.Fsync {
	case FsyncNever:
		return nil
	case FsyncAlways:
		if l.synced.Load() >= seq {
			return nil
		}
		if ctx.Done() == nil {
			// A context that cannot end (a publisher's, which waits for
			// what it appended whatever happens): no goroutine to watch it.
			return l.SyncTo(seq)
		}
		// fsync takes no context: on a hung disk it never returns, and a
		// caller that is shutting down must not hang with it.
		done := make(chan error, 1)
		go func() { done <- l.SyncTo(seq) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		l.syncedMu.Lock()
		ch := l.syncedCh
		l.syncedMu.Unlock()
		if l.synced.Load() >= seq {
			return nil
		}
		if last := l.last.Load(); last < seq {
			return fmt.Errorf("%w: wait for %d, log ends at %d", ErrBeyondEnd, seq, last)
		}
		l.mu.Lock()
		closed, err := l.closed, l.err
		l.mu.Unlock()
		switch {
		case err != nil:
			return err
		case closed:
			return ErrClosed
		}
		select {
		case <-ch:
		case <-l.stop:
			// Close fsyncs after stopping the goroutine: look again.
			<-l.done
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// VisibleSeq is the highest sequence number that may be shown to anyone
// (published, replayed, covered by a snapshot): DurableSeq, or LastSeq
// under FsyncNever, where nothing is known to be durable and a power loss
// may take back what was shown.
func (l *Log) VisibleSeq() uint64 {
	if l.opts.Fsync == FsyncNever {
		return l.last.Load()
	}
	return l.synced.Load()
}

// DurableSeq is the highest sequence number known to be on stable storage:
// every record at or below it survives a power loss. Under FsyncNever it is
// 0 (nothing is known). Records above it are readable but may vanish.
func (l *Log) DurableSeq() uint64 { return l.synced.Load() }
