package testenv

import (
	"errors"
	"net"
	"net/http"
	"testing"
)

// A program that cannot bind its port is seen to exit, and the cause is
// recognised, so that the Start functions retry on new ports.
func TestPortInUseDetected(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := StartProcess(t, "nsqlookupd", Bin(t, "nsqlookupd"), []string{
		"--tcp-address=" + l.Addr().String(),
		"--http-address=" + Addr(FreePort(t)),
	}, nil)
	err = p.awaitReady(NSQReadyTimeout, func() bool { return false })
	if !errors.Is(err, errExited) {
		t.Fatalf("awaitReady = %v, want errExited", err)
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
	p := StartProcess(t, "nsqlookupd", Bin(t, "nsqlookupd"), []string{
		"--tcp-address=" + Addr(FreePort(t)),
		"--http-address=" + impostor,
	}, nil)
	lk := &NSQLookupd{HTTPAddr: impostor, Proc: p}
	err = p.awaitReady(NSQReadyTimeout, lk.Ready)
	if !errors.Is(err, errExited) || !p.portInUse() {
		t.Fatalf("awaitReady = %v; want the program to exit on the taken port", err)
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
	c.pickPorts(t)
	c.ServerPort = l.Addr().(*net.TCPAddr).Port
	c.Proc = StartProcess(t, "consul", Bin(t, "consul"), c.args(), nil)
	c.Client = newConsulClient(t, c.HTTPAddr, "")
	err = c.Proc.awaitReady(ConsulReadyTimeout, c.Ready)
	if !errors.Is(err, errExited) || !c.Proc.portInUse() {
		t.Fatalf("awaitReady = %v, port in use recognised: %v\n%s", err, c.Proc.portInUse(), c.Proc.Log())
	}
}

func TestStartWithRetryMovesToNewPorts(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	l := &NSQLookupd{}
	attempts := 0
	startWithRetry(t, 3,
		func(attempt int) (*Process, error) {
			attempts++
			l.TCPAddr, l.HTTPAddr = Addr(FreePort(t)), Addr(FreePort(t))
			if attempt == 0 {
				l.TCPAddr = taken.Addr().String()
			}
			l.Proc = StartProcess(t, "nsqlookupd", Bin(t, "nsqlookupd"), []string{"--tcp-address=" + l.TCPAddr, "--http-address=" + l.HTTPAddr}, nil)
			return l.Proc, nil
		},
		func(p *Process) error { return p.awaitReady(NSQReadyTimeout, l.Ready) })
	if attempts != 2 || !l.Ready() {
		t.Fatalf("attempts %d, ready %v", attempts, l.Ready())
	}
}
