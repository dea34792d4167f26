package service

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/svckit/svckit/svckit/deadletter"
)

// serveDeadLetters opens the service's local dead-letter store
// (<data-dir>/deadletters), serves it on the HTTP port and says so in
// Consul (meta deadletter.MetaKey), so that `svckit deadletter` finds the
// dead letters nsqd did not take. Every service does this, consumer or
// not: a store may hold letters from an earlier run.
func (s *Service) serveDeadLetters() error {
	st, err := deadletter.NewStore(deadletter.StoreOptions{Dir: filepath.Join(s.Config.DataDir, "deadletters")})
	if err != nil {
		return fmt.Errorf("opening the dead-letter store: %w", err)
	}
	s.deadStore = st
	if s.HTTP.TLS() {
		// svckit's dead-letter client speaks HTTP: a service that serves
		// TLS (nsqauth, which consumes nothing) does not offer its store.
		return nil
	}
	st.Register(s.HTTP, s.Config.ReplaySecret, s.Config.Name)
	s.SetMeta(deadletter.MetaKey, deadletter.MetaValue)
	return nil
}

// DeadLetterStore is the service's local dead-letter store.
func (s *Service) DeadLetterStore() *deadletter.Store { return s.deadStore }

// DeadLetters returns the service's dead-letter sink: the same path as its
// consumers' dead letters (the service's producer to "<topic>.dead", else
// <data-dir>/deadletters).
func (s *Service) DeadLetters() (*deadletter.Sink, error) {
	p, err := s.Producer()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deadSink == nil {
		sink, err := deadletter.NewSink(deadletter.Options{
			Publisher: p, Store: s.deadStore, MaxMsgSize: s.Config.NSQ.MaxMsgSize,
			Logger: s.Log, Registry: s.Metrics.Registry,
		})
		if err != nil {
			return nil, err
		}
		s.deadSink = sink
	}
	return s.deadSink, nil
}

// TrackerDeadLetter returns a function for replay.TrackerOptions.DeadLetter
// that keeps what a tracker cannot apply as a dead letter of topic/channel
// (the tracker's consumer's), through DeadLetters.
func (s *Service) TrackerDeadLetter(topic, channel string) (func(ctx context.Context, stream string, seq uint64, frame []byte, reason string) error, error) {
	sink, err := s.DeadLetters()
	if err != nil {
		return nil, err
	}
	return sink.TrackerFunc(topic, channel), nil
}
