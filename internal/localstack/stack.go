package localstack

// Stack is a whole svckit infrastructure: a Consul agent, an nsqlookupd and an
// nsqd registered with that lookupd, both registered in Consul.
type Stack struct {
	Consul  *Consul
	Lookupd *NSQLookupd
	NSQD    *NSQD
}

// StartStack starts consul, nsqlookupd and nsqd (registered with the lookupd,
// whose address is added to o.LookupdTCPAddrs), registers nsqd and
// nsqlookupd in consul, and waits until both are passing there and the
// lookupd knows the nsqd. Consul boots while the NSQ programs start.
func (g *Group) StartStack(o NSQDOptions) (*Stack, error) {
	c, err := g.LaunchConsul(ConsulOptions{})
	if err != nil {
		return nil, err
	}
	s := &Stack{Consul: c}
	if s.Lookupd, err = g.StartNSQLookupd(); err != nil {
		return nil, err
	}
	o.LookupdTCPAddrs = append(append([]string(nil), o.LookupdTCPAddrs...), s.Lookupd.TCPAddr)
	if s.NSQD, err = g.StartNSQD(o); err != nil {
		return nil, err
	}
	if err := c.AwaitStart(g); err != nil {
		return nil, err
	}
	if err := s.Register(); err != nil {
		return nil, err
	}
	if err := s.Lookupd.WaitProducer(s.NSQD.TCPAddr); err != nil {
		return nil, err
	}
	return s, nil
}

// Register registers nsqd and nsqlookupd in consul (again, e.g. after a
// consul restart) and waits (up to PassingTimeout each) until both are
// passing.
func (s *Stack) Register() error {
	if err := s.Consul.Register(NSQService("nsqlookupd", s.Lookupd.TCPPort, s.Lookupd.HTTPPort)); err != nil {
		return err
	}
	if err := s.Consul.Register(NSQService("nsqd", s.NSQD.TCPPort, s.NSQD.HTTPPort)); err != nil {
		return err
	}
	if _, err := s.Consul.WaitPassing("nsqlookupd", 1, PassingTimeout); err != nil {
		return err
	}
	_, err := s.Consul.WaitPassing("nsqd", 1, PassingTimeout)
	return err
}

// Env returns the environment pointing svckit services at this stack's consul.
func (s *Stack) Env() []string { return s.Consul.Env() }
