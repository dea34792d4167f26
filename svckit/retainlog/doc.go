// Package retainlog is the retained log of a replayable publisher: a durable,
// segmented, CRC-checked, append-only on-disk log of sequenced records.
//
// The publisher appends every message (with its contiguous sequence number)
// before handing it to NSQ, so that anything a consumer may later miss can be
// replayed from here. That ordering is what makes the log the source of truth:
// a message NSQ saw is always in the log, hence Append must be durable against
// a crash at any instant and Read must never serve a record it cannot vouch for.
//
// # Files
//
// Records live in segment files <dir>/<first seq, 20 zero-padded digits>.log.
// The name carries the first sequence number so that Open learns the extent of
// every sealed segment from a directory listing alone, without reading it;
// only the last (active) segment is scanned. A record is
//
//	u32 BE body length ‖ u32 BE CRC-32C(body) ‖ body
//	body = u64 BE seq ‖ i64 BE unix nanos ‖ data
//
// A new segment is started when a batch would push the active one beyond
// Options.SegmentBytes (a single batch larger than that still goes into one
// segment), so a batch is never split across files.
//
// # Crash safety and damage
//
// Append writes a whole batch with one write(2) at the committed end of the
// active segment and only then advances the committed size that readers see. A
// crash can therefore leave at most a torn or garbage tail after the last
// complete record. Open scans the active segment, validating every CRC and that
// sequence numbers go up by exactly one.
//
// A torn tail and a damaged record are different things, and only the first
// is ever cut. Where a record fails validation, the scan looks for intact
// records again (resync, see Damage). A bad run with an intact record after
// it, or at or below Options.Durable (what its owner knew was durable), is
// damage: kept where it is, copied to the quarantine directory, reported
// (Damaged, Options.OnDamage) and skipped by Read, which serves every intact
// record and then returns a DamagedError naming the damaged sequences. A bad
// run at the end that nobody knew was durable is a torn tail: copied to the
// quarantine directory, then truncated (and fsynced) and reported through
// Recovery; it is never served. Sealed segments are trusted at Open (their
// extent follows from the file names) and checked by every Read and by the
// background scrubber (Options.ScrubRate), where anything bad is damage.
//
// A failed write (a full disk) is undone and wraps ErrWrite; the next Append
// tries again.
//
// # Fsync policy
//
// Append hands a batch to the kernel with write(2); a process crash (SIGKILL,
// panic, OOM kill) then loses nothing, because the data is in the page cache.
// What survives a power loss is what was fsynced: DurableSeq. WaitDurable
// waits until a record is, VisibleSeq is what may be shown to others. A
// publisher shows a record to nobody (NSQ, replay, snapshots) before it is
// durable: a record a consumer applied and the power then took would have
// its sequence number handed out again, to a different message.
//
//   - FsyncAlways (svckit's default): WaitDurable (and Append) fsync at once;
//     concurrent waiters share one fsync (group commit), so the cost is one
//     flush per group, not per record.
//   - FsyncInterval: a background goroutine fsyncs every
//     Options.FsyncInterval if there were appends; WaitDurable waits for it.
//     Fewer fsyncs, up to an interval of added latency.
//   - FsyncNever: flushing is left to the OS; nothing is known to be durable,
//     WaitDurable returns at once and VisibleSeq is LastSeq. A power loss can
//     take back records others have seen: for data that does not outlive the
//     machine.
//
// With always and interval, the outgoing segment is fsynced before a new one is
// created and the directory is fsynced after creating it, so a sealed segment
// is durable before any record is written after it. A failed fsync is sticky:
// the kernel may have dropped the dirty pages, so further Appends fail rather
// than pretend the log is intact.
//
// # Retention
//
// Retention deletes whole segments, oldest first, never the active one and
// never the last records (so LastSeq survives any retention setting). A
// sealed segment is deleted when the segments newer than it still satisfy a
// configured limit on their own: they hold at least RetainMessages records, or
// at least RetainBytes bytes, or the segment's newest record is older than
// RetainAge. Each limit is thus kept, with at most one extra segment. A
// segment holding a record at or above the floor (SetFloor; Options.Floor
// already for Open's own pass) is never deleted: its owner still needs it.
// Retention runs after every append (so on every segment roll) and from the
// background goroutine, which age limits need when no appends arrive.
//
// # Concurrency
//
// All methods are safe for concurrent use. Appends are serialised; a Read
// snapshots the committed size of the segments it needs under the lock and
// then reads them with its own file descriptors and no lock held, so readers
// never see a partially written batch and never block appends for long. Each
// Read holds a reference on the segments it uses; retention removes a segment
// from the log at once but unlinks its file only when the last reader has
// released it, which keeps concurrent deletion safe on every OS (not only on
// those where an open file survives unlink).
//
// A directory must be used by one Log (one process) at a time.
package retainlog
