package browser

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

// chromium is a headless Chromium, ended with the test.
type chromium struct {
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

// startChromium starts bin headless; onEvent sees every event (on the
// reading goroutine). Its output goes to <tmp>/chromium.log, printed if
// the test failed. Chromium also exits by itself when its command pipe
// ends: it does not outlive a test binary killed by -timeout.
func startChromium(t *testing.T, bin string, onEvent func(method string, params json.RawMessage)) *chromium {
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
	c := &chromium{w: cmdW, pending: map[int64]chan cdpMessage{}, gone: make(chan struct{}), onEvent: onEvent}
	go c.read(respR)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_ = c.call(ctx, "", "Browser.close", nil, nil)
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

func (c *chromium) read(r *os.File) {
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
func (c *chromium) call(ctx context.Context, session, method string, params, out any) error {
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
type page struct {
	c       *chromium
	session string
	target  string
}

// close closes the tab (the page that was before it in front is shown
// again: a hidden page does not draw).
func (p *page) close(ctx context.Context) error {
	return p.c.call(ctx, "", "Target.closeTarget", map[string]any{"targetId": p.target}, nil)
}

// front brings the tab to the front: the console's page draws only while
// it is visible.
func (p *page) front(ctx context.Context) error {
	return p.c.call(ctx, p.session, "Page.bringToFront", nil, nil)
}

// open opens a tab, attaches to it, enables Runtime (its exceptions are
// events) and only then loads url, so that no exception is missed.
func (c *chromium) open(ctx context.Context, url string) (*page, error) {
	var target struct{ TargetID string }
	if err := c.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		return nil, err
	}
	var att struct{ SessionID string }
	if err := c.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		return nil, err
	}
	p := &page{c: c, session: att.SessionID, target: target.TargetID}
	if err := c.call(ctx, p.session, "Runtime.enable", nil, nil); err != nil {
		return nil, err
	}
	var nav struct{ ErrorText string }
	if err := c.call(ctx, p.session, "Page.navigate", map[string]any{"url": url}, &nav); err != nil {
		return nil, err
	}
	if nav.ErrorText != "" {
		return nil, errors.New(url + ": " + nav.ErrorText)
	}
	return p, nil
}

// eval evaluates a JavaScript expression in the page (awaiting a
// promise) and decodes its value, returned by value, into out.
func (p *page) eval(ctx context.Context, expr string, out any) error {
	var res struct {
		Result           struct{ Value json.RawMessage }
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	err := p.c.call(ctx, p.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &res)
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

// screenshot is a PNG of the page's viewport.
func (p *page) screenshot(ctx context.Context) ([]byte, error) {
	var res struct{ Data string }
	if err := p.c.call(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &res); err != nil {
		return nil, err
	}
	return base64.StdEncoding.DecodeString(res.Data)
}
