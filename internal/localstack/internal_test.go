package localstack

import (
	"errors"
	"net"
	"net/http"
	"testing"
)

// newGroup returns a Group whose programs live in t's temporary directories
// and are killed when t ends.
func newGroup(t *testing.T) *Group {
	g := &Group{TempDir: func() (string, error) { return t.TempDir(), nil }}
	t.Cleanup(g.Close)
	return g
}

func bin(t *testing.T, name string) string {
	t.Helper()
	p, err := Bin("", name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A program that cannot bind its port is seen to exit, and the cause is
// recognised, so that the Start functions retry on new ports.
func TestPortInUseDetected(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p, err := newGroup(t).StartProcess("nsqlookupd", bin(t, "nsqlookupd"), []string{
		"--tcp-address=" + l.Addr().String(),
		"--http-address=" + Addr(freePort(t)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = p.AwaitReady(NSQReadyTimeout, func() bool { return false })
	if !errors.Is(err, ErrExited) {
		t.Fatalf("AwaitReady = %v, want ErrExited", err)
	}
	if !p.portInUse() {
		t.Fatalf("port in use not recognised in the log:\n%s", p.Log())
	}
}

// Something else answering /ping on nsqlookupd's HTTP port is not taken for
// nsqlookupd.
func TestReadyChecksIdentity(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("OK"))
	})}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	impostor := l.Addr().String()
	if !pingOK(impostor) {
		t.Fatal("impostor does not answer /ping")
	}
	p, err := newGroup(t).StartProcess("nsqlookupd", bin(t, "nsqlookupd"), []string{
		"--tcp-address=" + Addr(freePort(t)),
		"--http-address=" + impostor,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	lk := &NSQLookupd{HTTPAddr: impostor, Proc: p}
	err = p.AwaitReady(NSQReadyTimeout, lk.Ready)
	if !errors.Is(err, ErrExited) || !p.portInUse() {
		t.Fatalf("AwaitReady = %v; want the program to exit on the taken port", err)
	}
}

func TestConsulPortInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := &Consul{}
	if err := c.pickPorts(); err != nil {
		t.Fatal(err)
	}
	c.ServerPort = l.Addr().(*net.TCPAddr).Port
	if c.Proc, err = newGroup(t).StartProcess("consul", bin(t, "consul"), c.args(), nil); err != nil {
		t.Fatal(err)
	}
	if c.Client, err = newConsulClient(c.HTTPAddr, ""); err != nil {
		t.Fatal(err)
	}
	err = c.Proc.AwaitReady(ConsulReadyTimeout, c.Ready)
	if !errors.Is(err, ErrExited) || !c.Proc.portInUse() {
		t.Fatalf("AwaitReady = %v, port in use recognised: %v\n%s", err, c.Proc.portInUse(), c.Proc.Log())
	}
}

func TestStartWithRetryMovesToNewPorts(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	g := newGroup(t)
	var retries []string
	g.Logf = func(f string, a ...any) { retries = append(retries, f) }
	l := &NSQLookupd{}
	attempts := 0
	err = g.startWithRetry(3,
		func(attempt int) (*Process, error) {
			attempts++
			l.TCPAddr, l.HTTPAddr = Addr(freePort(t)), Addr(freePort(t))
			if attempt == 0 {
				l.TCPAddr = taken.Addr().String()
			}
			var err error
			l.Proc, err = g.StartProcess("nsqlookupd", bin(t, "nsqlookupd"), []string{"--tcp-address=" + l.TCPAddr, "--http-address=" + l.HTTPAddr}, nil)
			return l.Proc, err
		},
		func(p *Process) error { return p.AwaitReady(NSQReadyTimeout, l.Ready) })
	if err != nil || attempts != 2 || !l.Ready() || len(retries) != 1 {
		t.Fatalf("err %v, attempts %d, ready %v, retries logged %q", err, attempts, l.Ready(), retries)
	}
}
