package replay

import (
	"fmt"
	"path/filepath"

	"github.com/svckit/svckit/svckit/retainlog"
)

// What the owner reports: its stream's positions (GET /streams), whether
// it takes messages (readiness), and the records of its log the disk
// damaged (a gauge and a readiness detail).

// Status is an owner's entry in GET /streams.
type Status struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
	// Damaged are the retained sequences whose records the disk damaged
	// (kept in quarantine, never served; consumers that need them recover
	// through the snapshot), as [first, last] ranges.
	Damaged [][2]uint64 `json:"damaged,omitempty"`
	// NotAccepting says why the owner takes no new messages (its log
	// cannot be written: a full disk); empty while it does.
	NotAccepting string `json:"not_accepting,omitempty"`
}

// Status reports the stream's positions. LastSeq is the last message that
// may be shown to anyone (durable; see retainlog.VisibleSeq): consumers
// treat it as the end of the stream.
func (w *Owner) Status() Status {
	visible := w.log.VisibleSeq()
	st := Status{Stream: w.o.Stream, LastSeq: max(visible, w.after), RetainedFirst: w.log.FirstSeq(), RetainedLast: visible,
		Damaged: w.log.DamagedRanges()}
	if err := w.Accepting(); err != nil {
		st.NotAccepting = err.Error()
	}
	return st
}

// Accepting returns why the owner takes no new messages (its log cannot be
// written: the last append failed, or an fsync did, which is final until a
// restart), nil while it does: a readiness check.
func (w *Owner) Accepting() error {
	if err := w.log.Err(); err != nil {
		return fmt.Errorf("stream %s: the retained log failed (restart needed): %w", w.o.Stream, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.notAccepting != nil {
		return fmt.Errorf("stream %s: %w: %v", w.o.Stream, ErrNotAccepting, w.notAccepting)
	}
	return nil
}

// DamageSummary says which records of the log the disk damaged ("" when
// none): a readiness detail.
func (w *Owner) DamageSummary() string {
	rs := w.log.DamagedRanges()
	if len(rs) == 0 {
		return ""
	}
	var n uint64
	for _, r := range rs {
		n += r[1] - r[0] + 1
	}
	return fmt.Sprintf("%d damaged records (%s) kept in %s, served only through the snapshot",
		n, retainlog.FormatRanges(rs), filepath.Join(w.o.Log.Dir, "quarantine"))
}

// damageFound is the log's OnDamage: the log has logged the damage; the
// gauge follows (during OpenOwner, once the log is open).
func (w *Owner) damageFound(retainlog.Damage) {
	if w.opened.Load() != nil {
		w.updateDamaged()
	}
}

// updateDamaged sets the damaged-records gauge from the retained segments
// (retention may have deleted damaged ones).
func (w *Owner) updateDamaged() {
	var n uint64
	for _, r := range w.opened.Load().DamagedRanges() {
		n += r[1] - r[0] + 1
	}
	w.o.Metrics.DamagedRecords.WithLabelValues(w.o.Stream).Set(float64(n))
}
