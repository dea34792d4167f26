package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"
)

// NSQ's TCP protocol V2, spoken raw: after the magic "  V2", a command is
// "NAME params\n", followed for IDENTIFY, AUTH and PUB by a 4-byte
// big-endian size and the body; every answer is a frame: 4-byte size,
// 4-byte type (0 response, 1 error, 2 message), data.
const (
	frameResponse = 0
	frameError    = 1
	frameMessage  = 2
	maxFrame      = 16 << 20
)

// nsqPlan is one NSQ attempt.
type nsqPlan struct {
	name   string
	tls    bool   // ask for tls_v1
	secret string // AUTH with it ("" = no AUTH)
	sub    bool   // SUB results, else PUB readings
}

func (p *prober) nsq(ctx context.Context, addr string, emit func(result)) {
	if p.cfg.NSQSecret != "" {
		// the positive control never publishes into the datacenter
		emit(p.nsqAttempt(ctx, addr, nsqPlan{name: "nsq-sub-tls", tls: true, secret: p.cfg.NSQSecret, sub: true}))
		return
	}
	wrong := make([]byte, 16)
	_, _ = rand.Read(wrong)
	for _, plan := range []nsqPlan{
		{name: "nsq-pub-clear"},
		{name: "nsq-sub-clear", sub: true},
		{name: "nsq-pub-tls", tls: true},
		{name: "nsq-sub-tls", tls: true, sub: true},
		{name: "nsq-pub-wrong-secret", tls: true, secret: hex.EncodeToString(wrong)},
	} {
		emit(p.nsqAttempt(ctx, addr, plan))
	}
}

// nsqConn is a connection whose every read and write has the timeout.
type nsqConn struct {
	net.Conn
	timeout time.Duration
}

func (c *nsqConn) send(cmd string, body []byte) error {
	buf := []byte(cmd + "\n")
	if body != nil {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
		buf = append(buf, body...)
	}
	_ = c.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := c.Write(buf)
	return err
}

// frame reads the next frame that is not a heartbeat (those it answers).
func (c *nsqConn) frame() (typ uint32, data []byte, err error) {
	for {
		_ = c.SetReadDeadline(time.Now().Add(c.timeout))
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:4]); err != nil {
			return 0, nil, err
		}
		size := binary.BigEndian.Uint32(hdr[:4])
		if size < 4 || size > maxFrame {
			return 0, nil, fmt.Errorf("bad frame size %d", size)
		}
		if _, err := io.ReadFull(c, hdr[4:]); err != nil {
			return 0, nil, err
		}
		data = make([]byte, size-4)
		if _, err := io.ReadFull(c, data); err != nil {
			return 0, nil, err
		}
		typ = binary.BigEndian.Uint32(hdr[4:])
		if typ == frameResponse && string(data) == "_heartbeat_" {
			if err := c.send("NOP", nil); err != nil {
				return 0, nil, err
			}
			continue
		}
		return typ, data, nil
	}
}

// nsqStep is a step that did not end in OK: the attempt's outcome.
type nsqStep struct {
	outcome, detail string
}

func (e *nsqStep) Error() string { return e.detail }

// expect sends cmd (body may be nil) and reads its answer: a response frame
// (returned), or a nsqStep saying why not.
func (c *nsqConn) expect(step, cmd string, body []byte) ([]byte, error) {
	if cmd != "" {
		if err := c.send(cmd, body); err != nil {
			return nil, connStep(step, err)
		}
	}
	typ, data, err := c.frame()
	if err != nil {
		return nil, connStep(step, err)
	}
	switch typ {
	case frameResponse:
		return data, nil
	case frameError:
		return nil, &nsqStep{refused, step + ": " + string(data)}
	default:
		return nil, &nsqStep{refused, fmt.Sprintf("%s: unexpected frame type %d: %s", step, typ, data)}
	}
}

// connStep classifies a connection's failure after it was established:
// nsqd closing it is a refusal, silence is no answer.
func connStep(step string, err error) error {
	var ne net.Error
	switch {
	case tlsRefusal(err):
		return &nsqStep{refused, step + ": the server refused the client (TLS alert): " + err.Error()}
	case errors.As(err, &ne) && ne.Timeout():
		return &nsqStep{unreachable, step + ": no answer: " + err.Error()}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return &nsqStep{refused, step + ": the server closed the connection: " + err.Error()}
	}
	return &nsqStep{unreachable, step + ": " + err.Error()}
}

func (p *prober) nsqAttempt(ctx context.Context, addr string, plan nsqPlan) result {
	r := result{Attempt: plan.name, Target: addr}
	var trail []string
	err := p.nsqSteps(ctx, addr, plan, &trail)
	var st *nsqStep
	switch {
	case err == nil:
		r.Outcome = allowed
	case errors.As(err, &st):
		r.Outcome = st.outcome
		trail = append(trail, st.detail)
	default:
		r.Outcome = unreachable
		trail = append(trail, err.Error())
	}
	r.Detail = strings.Join(trail, "; ")
	return r
}

// nsqSteps makes plan's attempt, appending what each step did to trail; nil
// means the PUB or SUB got OK.
func (p *prober) nsqSteps(ctx context.Context, addr string, plan nsqPlan, trail *[]string) error {
	d := net.Dialer{Timeout: p.cfg.Timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return &nsqStep{unreachable, "connect: " + err.Error()}
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	c := &nsqConn{Conn: raw, timeout: p.cfg.Timeout}

	_ = c.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := c.Write([]byte("  V2")); err != nil {
		return connStep("magic", err)
	}
	ident, _ := json.Marshal(map[string]any{
		"client_id": "intruder", "hostname": "intruder",
		"feature_negotiation": true, "tls_v1": plan.tls,
	})
	data, err := c.expect("IDENTIFY", "IDENTIFY", ident)
	if err != nil {
		return err
	}
	var features struct {
		TLSv1        bool `json:"tls_v1"`
		AuthRequired bool `json:"auth_required"`
	}
	if string(data) != "OK" {
		if err := json.Unmarshal(data, &features); err != nil {
			return &nsqStep{refused, "IDENTIFY: unexpected response: " + string(data)}
		}
	}
	*trail = append(*trail, fmt.Sprintf("IDENTIFY ok (tls_v1=%t auth_required=%t)", features.TLSv1, features.AuthRequired))

	if plan.tls {
		if !features.TLSv1 {
			*trail = append(*trail, "nsqd declined TLS: going on in the clear")
		} else {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			tc := p.tls.Clone()
			tc.ServerName = host
			tlsConn := tls.Client(raw, tc)
			hctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
			err = tlsConn.HandshakeContext(hctx)
			cancel()
			if err != nil {
				return connStep("TLS handshake", err)
			}
			c.Conn = tlsConn
			if data, err := c.expect("TLS", "", nil); err != nil {
				return err
			} else if string(data) != "OK" {
				return &nsqStep{refused, "TLS: unexpected response: " + string(data)}
			}
			*trail = append(*trail, "TLS ok ("+tls.VersionName(tlsConn.ConnectionState().Version)+")")
		}
	}

	if plan.secret != "" {
		data, err := c.expect("AUTH", "AUTH", []byte(plan.secret))
		if err != nil {
			return err
		}
		var auth struct {
			Identity        string `json:"identity"`
			PermissionCount int    `json:"permission_count"`
		}
		_ = json.Unmarshal(data, &auth)
		*trail = append(*trail, fmt.Sprintf("AUTH ok (identity %q, %d permissions)", auth.Identity, auth.PermissionCount))
	}

	step, cmd, body := "PUB", "PUB readings", []byte(`{"intruder":true}`)
	if plan.sub {
		step, cmd, body = "SUB", "SUB results "+p.cfg.SubChannel, nil
	}
	data, err = c.expect(step, cmd, body)
	if err != nil {
		return err
	}
	if string(data) != "OK" {
		return &nsqStep{refused, step + ": unexpected response: " + string(data)}
	}
	*trail = append(*trail, step+" OK")
	if plan.sub {
		if err := c.send("RDY 1", nil); err != nil {
			*trail = append(*trail, "RDY: "+err.Error())
		}
	}
	return nil
}
