// Package cdp is a small client of the Chrome DevTools protocol for
// tests that drive headless Chromium (e2e/browser, the console's cost
// benchmark). Only tests import it.
package cdp

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A small client of the Chrome DevTools protocol over
// --remote-debugging-pipe: Chromium reads NUL-terminated JSON commands
// from its fd 3 and writes NUL-terminated responses and events to its
// fd 4. No websocket, no port, no dependency.

// Chromium is a headless Chromium, ended with the test.
type Chromium struct {
	w       *os.File // commands: Chromium's fd 3
	mu      sync.Mutex
	nextID  int64
	pending map[int64]chan cdpMessage
	gone    chan struct{} // its responses ended
	onEvent func(method string, params json.RawMessage)
}

type cdpMessage struct {
	ID        int64                           `json:"id,omitempty"`
	SessionID string                          `json:"sessionId,omitempty"`
	Method    string                          `json:"method,omitempty"`
	Params    json.RawMessage                 `json:"params,omitempty"`
	Result    json.RawMessage                 `json:"result,omitempty"`
	Error     *struct{ Message, Data string } `json:"error,omitempty"`
}

// Start starts bin headless; onEvent sees every event (on the
// reading goroutine). Its output goes to <tmp>/chromium.log, printed if
// the test failed. Chromium also exits by itself when its command pipe
// ends: it does not outlive a test binary killed by -timeout.
func Start(t testing.TB, bin string, onEvent func(method string, params json.RawMessage)) *Chromium {
	t.Helper()
	cmdR, cmdW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	respR, respW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "chromium.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
		"--user-data-dir="+t.TempDir(), "--window-size=1400,1000", "about:blank")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{cmdR, respW} // its fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	cmdR.Close()
	respW.Close()
	c := &Chromium{w: cmdW, pending: map[int64]chan cdpMessage{}, gone: make(chan struct{}), onEvent: onEvent}
	go c.read(respR)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = c.Call(ctx, "", "Browser.close", nil, nil)
		cancel()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			// Its process group: the browser, its zygote, its renderers.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		cmdW.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("chromium log %s (last 4 KiB):\n%s", logPath, b[max(0, len(b)-4096):])
		}
	})
	return c
}

func (c *Chromium) read(r *os.File) {
	defer close(c.gone)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		b, err := br.ReadBytes(0)
		if err != nil {
			return
		}
		var m cdpMessage
		if json.Unmarshal(b[:len(b)-1], &m) != nil {
			continue
		}
		if m.ID == 0 {
			if c.onEvent != nil {
				c.onEvent(m.Method, m.Params)
			}
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

// call sends method (to a page's session, unless session is "") and
// decodes its result into out (if not nil), within ctx's deadline.
func (c *Chromium) Call(ctx context.Context, session, method string, params, out any) error {
	var p json.RawMessage
	if params != nil {
		var err error
		if p, err = json.Marshal(params); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.nextID++
	id := c.nextID
	ch := make(chan cdpMessage, 1)
	c.pending[id] = ch
	b, _ := json.Marshal(cdpMessage{ID: id, SessionID: session, Method: method, Params: p})
	_, err := c.w.Write(append(b, 0))
	c.mu.Unlock()
	defer func() { c.mu.Lock(); delete(c.pending, id); c.mu.Unlock() }()
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m := <-ch:
		if m.Error != nil {
			return fmt.Errorf("%s: %s %s", method, m.Error.Message, m.Error.Data)
		}
		if out == nil {
			return nil
		}
		return json.Unmarshal(m.Result, out)
	case <-c.gone:
		return fmt.Errorf("%s: chromium is gone", method)
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// page is a tab, attached with a flat session.
type Page struct {
	c       *Chromium
	session string
	target  string
}

// Close closes the tab (the page that was before it in front is shown
// again: a hidden page does not draw).
func (p *Page) Close(ctx context.Context) error {
	return p.c.Call(ctx, "", "Target.closeTarget", map[string]any{"targetId": p.target}, nil)
}

// Front brings the tab to the front: the console's page draws only while
// it is visible.
func (p *Page) Front(ctx context.Context) error {
	return p.c.Call(ctx, p.session, "Page.bringToFront", nil, nil)
}

// Open opens a tab, attaches to it, enables Runtime (its exceptions are
// events) and only then loads url, so that no exception is missed.
func (c *Chromium) Open(ctx context.Context, url string) (*Page, error) {
	var target struct{ TargetID string }
	if err := c.Call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		return nil, err
	}
	var att struct{ SessionID string }
	if err := c.Call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	p := &Page{c: c, session: att.SessionID, target: target.TargetID}
	if err := c.Call(ctx, p.session, "Runtime.enable", nil, nil); err != nil {
		return nil, err
	}
	var nav struct{ ErrorText string }
	if err := c.Call(ctx, p.session, "Page.navigate", map[string]any{"url": url}, &nav); err != nil {
		return nil, err
	}
	if nav.ErrorText != "" {
		return nil, errors.New(url + ": " + nav.ErrorText)
	}
	return p, nil
}

// Eval evaluates a JavaScript expression in the page (awaiting a
// promise) and decodes its value, returned by value, into out.
func (p *Page) Eval(ctx context.Context, expr string, out any) error {
	var res struct {
		Result           struct{ Value json.RawMessage }
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	err := p.c.Call(ctx, p.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &res)
	if err != nil {
		return err
	}
	if e := res.ExceptionDetails; e != nil {
		return fmt.Errorf("evaluating %.80q: %s %s", expr, e.Text, e.Exception.Description)
	}
	if out == nil || len(res.Result.Value) == 0 {
		return nil
	}
	return json.Unmarshal(res.Result.Value, out)
}

// Screenshot is a PNG of the page's viewport.
func (p *Page) Screenshot(ctx context.Context) ([]byte, error) {
	var res struct{ Data string }
	if err := p.c.Call(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &res); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(res.Data)
}

// Bin is Chromium's path; without one the test is skipped, or fails
// when SVCKIT_REQUIRE_BROWSER is set (CI).
func Bin(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("SVCKIT_REQUIRE_BROWSER") != "" {
		t.Fatal("SVCKIT_REQUIRE_BROWSER is set but there is no Chromium (neither /usr/bin/chromium nor chromium on PATH): apt-get install chromium")
	}
	t.Skip("no Chromium (neither /usr/bin/chromium nor chromium on PATH): the console's page is not tested in a browser (apt-get install chromium; SVCKIT_REQUIRE_BROWSER=1 makes this a failure)")
	return ""
}
