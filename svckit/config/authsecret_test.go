package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The NSQ auth secret comes from --nsq-auth-secret or from the file
// --nsq-auth-secret-file names (as svckit nsqauth serve --issue writes it),
// never both.
func TestAuthSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("  0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ secret, file, want, err string }{
		{"", "", "", ""},
		{"s3cret", "", "s3cret", ""},
		{"", file, "0123456789abcdef", ""},
		{"s3cret", file, "", "give one"},
		{"", filepath.Join(dir, "missing"), "", "no such file"},
		{"", empty, "", "empty"},
	} {
		got, err := AuthSecret(c.secret, c.file)
		if got != c.want || (err == nil) != (c.err == "") || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("AuthSecret(%q, %q) = %q, %v; want %q, error containing %q", c.secret, c.file, got, err, c.want, c.err)
		}
	}
}

// The replay secret comes the same way, from --replay-secret or
// --replay-secret-file, and the errors name those flags.
func TestReplaySecret(t *testing.T) {
	file := filepath.Join(t.TempDir(), "replay")
	if err := os.WriteFile(file, []byte("r3play\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReplaySecret("", file); got != "r3play" || err != nil {
		t.Fatalf("ReplaySecret from a file = %q, %v", got, err)
	}
	if _, err := ReplaySecret("x", file); err == nil || !strings.Contains(err.Error(), "--replay-secret and --replay-secret-file") {
		t.Fatalf("both given: %v", err)
	}
}
