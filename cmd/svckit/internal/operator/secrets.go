package operator

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// ConsoleTokenFile is the operator's token for the console, in a
// datacenter's secrets.
const ConsoleTokenFile = "operator.token"

// MetricsTokenFile is what the services' GET /metrics asks for, in a
// datacenter's secrets.
const MetricsTokenFile = "metrics.token"

func secretsCommand() *cli.Command {
	return &cli.Command{
		Name:  "secrets",
		Usage: "a datacenter's secrets, made once, kept outside the repository",
		Subcommands: []*cli.Command{{
			Name:  "init",
			Usage: "make the CA, certificates, gossip key, ACL token secrets and replay secret of a datacenter",
			Description: `Writes into --out (created 0700; every file 0600), keeping what is there:
  ca.pem, ca-key.pem             the datacenter's CA (ECDSA P-256, 10 years)
  gossip.key                     Consul's gossip encryption key
  management.token               the operator's Consul management token (the servers'
                                 initial_management: Consul's from the first leader)
  replay.secret                  the replay endpoints' shared secret
  operator.token                 the operator's token for the console (svckit console
                                 --operator-token-file): reading its page, requeueing
  nsqdstats.secret               what the console signs its requests to svckit nsqd-stats
                                 with (nsqd's /stats)
  metrics.token                  what the services' GET /metrics asks for (--metrics-token-file;
                                 Prometheus: authorization.credentials_file)
  tokens/<service>.token         a Consul token secret per --service
  tokens/agent-<host>.token      the Consul agent token of each --host
  hosts/<host>/consul.hcl        the agent's configuration: gossip encryption, TLS
                                 with verification, ACLs denying by default, its
                                 agent token and the initial management token
  hosts/<host>/consul.pem, consul-key.pem
                                 its server certificate (server.<dc>.consul, consul,
                                 <host>-consul, localhost, 127.0.0.1; 1 year)
  hosts/<host>/nsqd.pem, nsqd-key.pem
                                 its nsqd's certificate (nsqd, <host>-nsqd, localhost,
                                 127.0.0.1)
  hosts/<host>/nsqauth.pem, nsqauth-key.pem
                                 its nsqauth's (nsqauth, <host>-nsqauth, localhost,
                                 127.0.0.1): nsqd asks it over HTTPS
  hosts/<host>/console.pem, console-key.pem
                                 its console's (console, <host>-console, localhost,
                                 127.0.0.1): the page is served over HTTPS
The paths in consul.hcl are where --out is mounted in the container
(--mount). The tokens become real with 'svckit acl apply --tokens <out>/tokens',
which keeps these secrets. Running init again makes only what is missing (a
new host, a new service): nothing is replaced.`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dc", Required: true, Usage: "the datacenter's name (Consul's -datacenter)"},
				&cli.StringSliceFlag{Name: "host", Required: true, Usage: "a host (Consul node name) of the datacenter (repeatable)"},
				&cli.StringSliceFlag{Name: "service", Usage: "a service that gets a Consul token (repeatable)"},
				&cli.StringFlag{Name: "out", Required: true, Usage: "the datacenter's secrets directory (outside the repository)"},
				&cli.StringFlag{Name: "mount", Value: "/secrets", Usage: "where --out is mounted in the Consul container"},
			},
			Action: runSecretsInit,
		}},
	}
}

func runSecretsInit(c *cli.Context) error {
	dc, out, mount := c.String("dc"), c.String("out"), c.String("mount")
	if !validName(dc) {
		return usagef("--dc %q: want [A-Za-z0-9_-]", dc)
	}
	hosts := c.StringSlice("host")
	for _, h := range hosts {
		if !validName(h) {
			return usagef("--host %q: want [A-Za-z0-9_-]", h)
		}
	}
	for _, s := range c.StringSlice("service") {
		if !validName(s) {
			return usagef("--service %q: want [A-Za-z0-9_-]", s)
		}
	}
	s, err := initSecrets(out, mount, dc, hosts, c.StringSlice("service"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "secrets of datacenter %s in %s (%d hosts, %d service tokens); made now: %s\n",
		dc, out, len(hosts), len(c.StringSlice("service")), strings.Join(s, ", "))
	return nil
}

// initSecrets makes what is missing in out and returns what it made.
func initSecrets(out, mount, dc string, hosts, services []string) ([]string, error) {
	var made []string
	for _, d := range []string{out, filepath.Join(out, "tokens"), filepath.Join(out, "hosts")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
		// An existing directory too: only its owner may look in.
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("restricting %s to its owner: %w", d, err)
		}
	}
	keep := func(name string, mk func() ([]byte, error)) error {
		path := filepath.Join(out, name)
		if _, err := os.Lstat(path); err == nil {
			return nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		b, err := mk()
		if err != nil {
			return fmt.Errorf("making %s: %w", name, err)
		}
		if err := writeSecret(path, b); err != nil {
			return err
		}
		made = append(made, name)
		return nil
	}
	random := func(n int) func() ([]byte, error) {
		return func() ([]byte, error) {
			b := make([]byte, n)
			if _, err := rand.Read(b); err != nil {
				return nil, err
			}
			return []byte(base64.StdEncoding.EncodeToString(b) + "\n"), nil
		}
	}
	token := func() ([]byte, error) { return []byte(newUUID() + "\n"), nil }
	if err := keep("gossip.key", random(32)); err != nil {
		return nil, err
	}
	if err := keep(replaySecretFile, random(32)); err != nil {
		return nil, err
	}
	if err := keep("management.token", token); err != nil {
		return nil, err
	}
	// The console's: reading its page and requeueing dead letters.
	if err := keep(ConsoleTokenFile, random(32)); err != nil {
		return nil, err
	}
	// What the services' GET /metrics asks for (Prometheus sends it).
	if err := keep(MetricsTokenFile, random(32)); err != nil {
		return nil, err
	}
	// nsqd's statistics' (svckit nsqd-stats and the console): not the
	// replay secret, which whoever verifies with could also sign with.
	if err := keep(NSQDStatsSecretFile, random(32)); err != nil {
		return nil, err
	}
	for _, s := range services {
		if err := keep(filepath.Join("tokens", s+".token"), token); err != nil {
			return nil, err
		}
	}
	for _, h := range hosts {
		if err := keep(filepath.Join("tokens", "agent-"+h+".token"), token); err != nil {
			return nil, err
		}
	}
	// The CA: both files or neither.
	caCert, caKey := filepath.Join(out, "ca.pem"), filepath.Join(out, "ca-key.pem")
	if _, err := os.Lstat(caCert); errors.Is(err, os.ErrNotExist) {
		cert, key, err := newCA(dc)
		if err != nil {
			return nil, err
		}
		if err := writeSecret(caKey, key); err != nil {
			return nil, err
		}
		if err := writeSecret(caCert, cert); err != nil {
			return nil, err
		}
		made = append(made, "ca.pem", "ca-key.pem")
	}
	ca, err := loadCA(caCert, caKey)
	if err != nil {
		return nil, err
	}
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(out, name))
		return strings.TrimSpace(string(b)), err
	}
	gossip, err := read("gossip.key")
	if err != nil {
		return nil, err
	}
	mgmt, err := read("management.token")
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		dir := filepath.Join("hosts", h)
		if err := os.MkdirAll(filepath.Join(out, dir), 0o700); err != nil {
			return nil, err
		}
		for _, leaf := range []struct {
			name string
			dns  []string
		}{
			// The names a client dials: the compose service's, and the
			// host-prefixed alias of a multi-host datacenter.
			{"consul", []string{"server." + dc + ".consul", "consul", h + "-consul", "localhost"}},
			{"nsqd", []string{"nsqd", h + "-nsqd", "localhost"}},
			// nsqd asks nsqauth over HTTPS: an NSQ secret never crosses
			// the network in clear.
			{"nsqauth", []string{"nsqauth", h + "-nsqauth", "localhost"}},
			// The console serves its page over HTTPS: the operator's
			// token crosses the network to it.
			{"console", []string{"console", h + "-console", "localhost"}},
		} {
			certPath := filepath.Join(dir, leaf.name+".pem")
			if _, err := os.Lstat(filepath.Join(out, certPath)); err == nil {
				continue
			}
			cert, key, err := ca.issue(leaf.dns)
			if err != nil {
				return nil, err
			}
			if err := writeSecret(filepath.Join(out, dir, leaf.name+"-key.pem"), key); err != nil {
				return nil, err
			}
			if err := writeSecret(filepath.Join(out, certPath), cert); err != nil {
				return nil, err
			}
			made = append(made, certPath)
		}
		agent, err := read(filepath.Join("tokens", "agent-"+h+".token"))
		if err != nil {
			return nil, err
		}
		hcl := consulHCL(filepath.Join(mount), filepath.ToSlash(dir), gossip, mgmt, agent)
		if err := keep(filepath.Join(dir, "consul.hcl"), func() ([]byte, error) { return []byte(hcl), nil }); err != nil {
			return nil, err
		}
	}
	return made, nil
}

// consulHCL is an agent's security configuration; mount is where the
// secrets directory is in its container, dir the host's directory in it.
func consulHCL(mount, dir, gossip, mgmt, agent string) string {
	p := func(name string) string { return filepath.ToSlash(filepath.Join(mount, name)) }
	return fmt.Sprintf(`# Made by svckit secrets init. Secret: never commit it.
encrypt = %q
encrypt_verify_incoming = true
encrypt_verify_outgoing = true
tls {
  defaults {
    ca_file         = %q
    cert_file       = %q
    key_file        = %q
    verify_incoming = true
    verify_outgoing = true
    tls_min_version = "TLSv1_2"
  }
  # The HTTPS API: clients prove who they are with ACL tokens, and verify
  # the agent's certificate against the CA.
  https { verify_incoming = false }
  internal_rpc { verify_server_hostname = true }
}
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
  # initial_management is the operator's management.token, made Consul's
  # by the first leader: before it, anyone reaching the HTTPS API could
  # take the ACL bootstrap (PUT /v1/acl/bootstrap) and a management token
  # of their own. This file is only in the Consul server's secrets volume
  # (Consul's data holds every token's secret anyway).
  # The agent's own token also registers the services this file's
  # neighbours define (nsqd, nsqlookupd): without it they would be
  # registered with the anonymous token, and refused. It is not the
  # default token, which every request without a token would get.
  tokens {
    initial_management               = %q
    agent                            = %q
    config_file_service_registration = %q
  }
}
`, gossip, p("ca.pem"), p(dir+"/consul.pem"), p(dir+"/consul-key.pem"), mgmt, agent, agent)
}

// writeSecret writes b to path with mode 0600, refusing to follow or
// replace anything already there.
func writeSecret(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

type certAuthority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(dc string) (certPEM, keyPEM []byte, err error) {
	return sign(&x509.Certificate{
		Subject:   pkix.Name{CommonName: "svckit CA of datacenter " + dc},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil)
}

// sign makes a key and a certificate of tmpl for it, signed by ca (nil:
// self-signed), both PEM.
func sign(tmpl *x509.Certificate, ca *certAuthority) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	if tmpl.SerialNumber, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)); err != nil {
		return nil, nil, err
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func loadCA(certPath, keyPath string) (*certAuthority, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, fmt.Errorf("%s or %s: not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := x509.ParseECPrivateKey(kblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	return &certAuthority{cert: cert, key: key}, nil
}

// issue makes a leaf certificate for names (and 127.0.0.1), usable as a
// server's and as a client's (Consul servers connect to each other).
func (ca *certAuthority) issue(names []string) (certPEM, keyPEM []byte, err error) {
	return sign(&x509.Certificate{
		Subject:   pkix.Name{CommonName: names[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    names, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}, ca)
}
