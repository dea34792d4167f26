// Package securitytest checks svckit against an ACL-enabled Consul agent, a
// TLS-only nsqd and owners that require a replay secret: the real programs,
// started with svckit/testenv.
package securitytest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/testenv"
)

// certs writes a CA and a server certificate for 127.0.0.1 into dir.
func certs(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "svckit test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(srvKey)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

// service starts one of our binaries against consul.
func service(t *testing.T, c *testenv.Consul, name, bin string, env []string, args ...string) *testenv.Process {
	t.Helper()
	base := []string{"--consul-addr=" + c.HTTPAddr, "--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir(),
		"--check-interval=1s", "--nsq-lookupd-poll-interval=1s", "--instance-id=" + name}
	return testenv.StartProcess(t, name, testenv.Bin(t, bin), append(base, args...), env)
}

func addrOf(t *testing.T, c *testenv.Consul, service string) string {
	t.Helper()
	var e []*api.ServiceEntry
	testenv.WaitFor(t, 60*time.Second, service+" passing in consul", func() bool {
		e, _, _ = c.Client.Health().Service(service, "", true, nil)
		return len(e) > 0
	})
	return net.JoinHostPort(e[0].Service.Address, strconv.Itoa(e[0].Service.Port))
}

func getJSON(url string, v any) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(v)
}

type appStream struct {
	Stream         string      `json:"stream"`
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Gaps           [][2]uint64 `json:"gaps"`
}

// waitAppExact waits until the app applied 1..n of stream exactly once.
func waitAppExact(t *testing.T, c *testenv.Consul, stream string, n uint64) {
	t.Helper()
	testenv.WaitFor(t, 90*time.Second, "the app to apply every reading exactly once", func() bool {
		e, _, _ := c.Client.Health().Service("app", "", true, nil)
		if len(e) == 0 {
			return false
		}
		var ss []appStream
		if _, err := getJSON("http://"+net.JoinHostPort(e[0].Service.Address, strconv.Itoa(e[0].Service.Port))+"/streams", &ss); err != nil {
			return false
		}
		for _, s := range ss {
			if s.Stream == stream {
				return s.Applied == n && s.LastContiguous == n && len(s.Gaps) == 0
			}
		}
		return false
	})
}
