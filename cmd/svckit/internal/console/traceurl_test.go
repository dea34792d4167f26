package console

import (
	"strings"
	"testing"
)

// --trace-url is refused, with a line naming what is wrong, unless the page
// can make a link of it.
func TestCheckTraceURL(t *testing.T) {
	for u, want := range map[string]string{
		"": "",
		"http://jaeger:16686/search?service=sensor&tags=%7B%22messaging.message.id%22%3A%22{id}%22%7D": "",
		"https://traces.example/trace?id={id}":                                                         "",
		"http://jaeger:16686/search":                                                                   "no {id}",
		"jaeger:16686/search?id={id}":                                                                  "not an http or https URL",
		"javascript:alert(1)//{id}":                                                                    "not an http or https URL",
		"/search?id={id}":                                                                              "not an http or https URL",
		"http://[::1/search?id={id}":                                                                   "--trace-url",
		"https://user:pass@jaeger/search?id={id}":                                                      "credentials",
		"https://{id}.example/search":                                                                  "in the host",
	} {
		err := checkTraceURL(u)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("checkTraceURL(%q) = %v, want %q", u, err, want)
		}
	}
}
