package stage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/stage"
)

// A Transform is the whole of a stage's own code: one input in, its
// outputs out. Service.Stage runs it on every message of the input topic
// and publishes what it returns; a replay runs it again on the same input,
// so it must depend on the input alone.
//
// Zero outputs filter the input out (the stage publishes a marker, so
// consumers downstream still know the sequence is complete), one output
// replaces it, several split it into parts that keep the input's (stream,
// seq). An error wrapped by pubsub.Reject is final: the input is
// dead-lettered. Any other error is retried.
func ExampleTransform() {
	words := stage.Transform(func(_ context.Context, in envelope.Envelope) ([]stage.Output, error) {
		if in.ContentType != "text/plain" {
			return nil, pubsub.Reject(fmt.Errorf("content type %q, want text/plain", in.ContentType))
		}
		var outs []stage.Output
		for _, w := range bytes.Fields(in.Payload) {
			outs = append(outs, stage.Output{ContentType: "text/plain", Payload: w})
		}
		return outs, nil // no words: no outputs, the input is filtered out
	})

	ctx := context.Background()
	for _, payload := range []string{"one hop", "", "x"} {
		outs, err := words(ctx, envelope.Envelope{Stream: "s1", Seq: 7, ContentType: "text/plain", Payload: []byte(payload)})
		fmt.Printf("%q: %d outputs", payload, len(outs))
		for _, o := range outs {
			fmt.Printf(" %q", o.Payload)
		}
		fmt.Println("", err)
	}
	_, err := words(ctx, envelope.Envelope{Stream: "s1", Seq: 8, ContentType: "application/json"})
	var perm pubsub.PermanentError
	fmt.Println("dead-lettered:", errors.As(err, &perm))
	// Output:
	// "one hop": 2 outputs "one" "hop" <nil>
	// "": 0 outputs <nil>
	// "x": 1 outputs "x" <nil>
	// dead-lettered: true
}
