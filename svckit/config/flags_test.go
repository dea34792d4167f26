package config_test

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

// settings is a service's own, declared once: FlagsOf makes the flags and
// their variables from it, Load reads them back, CheckMin bounds them.
type settings struct {
	Topic  string        `flag:"topic" usage:"topic"`
	Rate   float64       `flag:"rate" usage:"per second"`
	Count  uint64        `flag:"count" min:"1" usage:"how many"`
	Size   int64         `flag:"size" min:"64" usage:"bytes"`
	Every  time.Duration `flag:"every" min:"1ns" usage:"period"`
	On     bool          `flag:"on" usage:"switch"`
	Peers  []string      `flag:"peer" usage:"repeatable"`
	Secret string        `flag:"secret" file:"file holding --secret" usage:"a secret"`
	Inner  struct {
		Depth int `flag:"depth" usage:"nested settings are walked"`
	}
	NotASetting string
}

func loadSettings(t *testing.T, def settings, args ...string) (settings, error) {
	t.Helper()
	got := def
	var loadErr error
	app := &cli.App{Name: "own", Flags: config.FlagsOf(def), Writer: io.Discard, ErrWriter: io.Discard,
		OnUsageError:   func(_ *cli.Context, err error, _ bool) error { return err },
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			if loadErr = config.Load(c, &got); loadErr == nil {
				loadErr = config.CheckMin(got)
			}
			return nil
		}}
	if err := app.Run(append([]string{"own"}, args...)); err != nil {
		return settings{}, err
	}
	return got, loadErr
}

func TestSettingsDeclaredOnce(t *testing.T) {
	def := settings{Topic: "readings", Rate: 10, Count: 3, Size: 128, Every: time.Second, Peers: []string{"a"}}
	for _, f := range config.FlagsOf(def) {
		for _, e := range f.(interface{ GetEnvVars() []string }).GetEnvVars() {
			t.Setenv(e, "")
			os.Unsetenv(e)
		}
	}
	got, err := loadSettings(t, def)
	if err != nil {
		t.Fatal(err)
	}
	if got.Topic != "readings" || got.Rate != 10 || got.Count != 3 || got.Size != 128 || got.Every != time.Second || got.On ||
		!slices.Equal(got.Peers, []string{"a"}) || got.Secret != "" || got.Inner.Depth != 0 {
		t.Fatalf("defaults: %+v", got)
	}

	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte(" s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SVCKIT_RATE", "2.5")
	t.Setenv("SVCKIT_SECRET_FILE", secret)
	got, err = loadSettings(t, def, "--topic=x", "--count=9", "--size=64", "--every=5ms", "--on", "--peer=b", "--peer=c", "--depth=2")
	if err != nil {
		t.Fatal(err)
	}
	if got.Topic != "x" || got.Rate != 2.5 || got.Count != 9 || got.Size != 64 || got.Every != 5*time.Millisecond || !got.On ||
		!slices.Equal(got.Peers, []string{"b", "c"}) || got.Secret != "s3cret" || got.Inner.Depth != 2 {
		t.Fatalf("flags and environment: %+v", got)
	}

	for arg, want := range map[string]string{"--size=63": "--size 63: must be at least 64", "--every=0s": "--every 0s: must be positive", "--count=0": "--count 0: must be at least 1"} {
		if _, err := loadSettings(t, def, arg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", arg, err, want)
		}
	}
	// Loading settings whose flags the command lacks is an error, not
	// zero values.
	var other struct {
		Missing int `flag:"missing" usage:"not a flag of the command"`
	}
	app := &cli.App{Name: "own", Flags: config.FlagsOf(def), Writer: io.Discard, ErrWriter: io.Discard,
		Action: func(c *cli.Context) error { return config.Load(c, &other) }}
	if err := app.Run([]string{"own"}); err == nil || !strings.Contains(err.Error(), "--missing: no such flag") {
		t.Errorf("Load of settings without flags: err %v, want one naming --missing", err)
	}
	t.Setenv("SVCKIT_SECRET_FILE", "")
	if _, err := loadSettings(t, def, "--secret=a", "--secret-file="+secret); err == nil || !strings.Contains(err.Error(), "give one") {
		t.Errorf("--secret and --secret-file: err %v, want one saying to give one", err)
	}
}
