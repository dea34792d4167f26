package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/svckit/svckit/svckit/logging"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// errConnClosed is what the commands still awaiting an answer get when the
// connection closes under them.
var errConnClosed = errors.New("connection to nsqd closed")

// nsqdConn publishes over one go-nsq Conn (which does the protocol: magic,
// IDENTIFY, TLS, AUTH, heartbeats, framing). Commands are pipelined on the
// connection and nsqd answers them in order, so a FIFO of callbacks matches
// answers to commands, as go-nsq's Producer does.
//
// It exists for one thing go-nsq's Producer cannot do: send an MPUB whose
// body the caller has encoded already. Producer.MultiPublish copies every
// body into a new command buffer, which for the Batcher (whose reused buffer
// already holds the MPUB body) was a copy and a buffer of garbage per batch,
// and the largest allocation on svckit's publish path.
type nsqdConn struct {
	addr string
	conn *nsq.Conn
	lg   *slog.Logger

	// writeMu orders commands on the wire as they are in pending. It is
	// held across the write; qMu is never held across I/O, so the read
	// loop can always take answers off the queue (nsqd stops reading us if
	// we stop reading its answers).
	writeMu sync.Mutex
	qMu     sync.Mutex
	pending []func(error)
	closed  bool  // set by OnClose: no more commands
	ioErr   error // the error that closed the connection, if any
	done    chan struct{}
}

// dialNSQD connects and identifies to the nsqd at addr.
func dialNSQD(addr string, cfg *nsq.Config, lg *slog.Logger) (*nsqdConn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nsq configuration for %s: %w", addr, err)
	}
	c := &nsqdConn{addr: addr, lg: lg, done: make(chan struct{})}
	c.conn = nsq.NewConn(addr, cfg, connDelegate{c})
	c.conn.SetLogger(logging.NSQLogger{L: lg}, logging.NSQLevel(lg), "(%s)")
	if _, err := c.conn.Connect(); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("connecting to nsqd %s: %w", addr, err)
	}
	return c, nil
}

// send writes cmd; done is called exactly once with nsqd's answer: nil for
// OK, nsq.ErrProtocol for an error frame, or the connection's failure. It
// runs on the connection's read loop (or at once, if the connection is
// closed already), so it must not block.
func (c *nsqdConn) send(cmd *nsq.Command, done func(error)) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	c.qMu.Lock()
	if c.closed {
		err := c.closeErr()
		c.qMu.Unlock()
		done(err)
		return
	}
	c.pending = append(c.pending, done)
	c.qMu.Unlock()
	// A failed write closes the connection (OnIOError), and OnClose fails
	// everything still pending, this command included.
	_ = c.conn.WriteCommand(cmd)
}

// do sends cmd and waits for its answer or the end of ctx. If ctx ends
// first, nsqd may still publish what was sent: the caller retries, and
// consumers deduplicate.
func (c *nsqdConn) do(ctx context.Context, cmd *nsq.Command) error {
	return await(ctx, func(done func(error)) { c.send(cmd, done) })
}

// await starts an operation that reports once through done, and waits for
// that report or the end of ctx.
func await(ctx context.Context, start func(done func(error))) error {
	answer := make(chan error, 1)
	start(func(err error) { answer <- err })
	select {
	case err := <-answer:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// isClosed is true once the connection is closing or closed.
func (c *nsqdConn) isClosed() bool {
	if c.conn.IsClosing() {
		return true
	}
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// Close starts closing the connection; commands awaiting an answer fail.
func (c *nsqdConn) Close() { c.conn.Close() }

// closeErr is the error for commands that the closed connection will never
// answer. Call with qMu held.
func (c *nsqdConn) closeErr() error {
	if c.ioErr != nil {
		return fmt.Errorf("nsqd %s: %w: %v", c.addr, errConnClosed, c.ioErr)
	}
	return fmt.Errorf("nsqd %s: %w", c.addr, errConnClosed)
}

// answer hands the oldest pending command its outcome.
func (c *nsqdConn) answer(err error) {
	c.qMu.Lock()
	if len(c.pending) == 0 {
		c.qMu.Unlock()
		c.lg.Warn("nsqd answered a command that was not sent; closing", "nsqd", c.addr, "err", err)
		c.conn.Close()
		return
	}
	done := c.pending[0]
	c.pending[0] = nil
	c.pending = c.pending[1:]
	c.qMu.Unlock()
	done(err)
}

// connDelegate receives the Conn's events (on its read loop).
type connDelegate struct{ c *nsqdConn }

func (d connDelegate) OnResponse(_ *nsq.Conn, _ []byte) { d.c.answer(nil) }
func (d connDelegate) OnError(_ *nsq.Conn, data []byte) {
	d.c.answer(nsq.ErrProtocol{Reason: string(data)})
}
func (d connDelegate) OnMessage(*nsq.Conn, *nsq.Message)         {}
func (d connDelegate) OnMessageFinished(*nsq.Conn, *nsq.Message) {}
func (d connDelegate) OnMessageRequeued(*nsq.Conn, *nsq.Message) {}
func (d connDelegate) OnBackoff(*nsq.Conn)                       {}
func (d connDelegate) OnContinue(*nsq.Conn)                      {}
func (d connDelegate) OnResume(*nsq.Conn)                        {}
func (d connDelegate) OnHeartbeat(*nsq.Conn)                     {}

// OnIOError may run inside send's write (with writeMu held, qMu not): it
// only records the error and starts the close.
func (d connDelegate) OnIOError(_ *nsq.Conn, err error) {
	d.c.qMu.Lock()
	if d.c.ioErr == nil {
		d.c.ioErr = err
	}
	d.c.qMu.Unlock()
	d.c.conn.Close()
}

// OnClose runs after the Conn's loops have exited: nothing more will be
// answered, so everything pending fails.
func (d connDelegate) OnClose(*nsq.Conn) {
	c := d.c
	c.qMu.Lock()
	c.closed = true
	pending := c.pending
	c.pending = nil
	err := c.closeErr()
	c.qMu.Unlock()
	close(c.done)
	for _, done := range pending {
		done(err)
	}
}
