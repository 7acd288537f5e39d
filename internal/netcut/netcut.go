// Package netcut is a TCP proxy that can cut a link the way a network or a
// dead process does: every connection closed at once, new ones refused,
// nothing said to either side. Tests and the hollow machines use it to lose
// a client without letting it say goodbye.
package netcut

import (
	"bytes"
	"io"
	"net"
	"sync"
)

// Proxy forwards every connection made to Addr to one target address.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
	wg     sync.WaitGroup
	hold   *hold
}

// hold is a client chunk to hold back on its way to the target.
type hold struct {
	match   []byte
	once    sync.Once
	held    chan struct{}
	release chan struct{}
	freed   sync.Once
}

// New listens on a free loopback port and forwards to target (host:port).
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		var up net.Conn
		if !down {
			up, err = net.Dial("tcp", p.target)
		}
		if down || err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); p.copyUp(up, c); up.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, up); c.Close() }()
	}
}

// Hold holds back the first chunk a client sends that contains match (e.g.
// the value of one etcd put) until release is called; held is closed when
// that chunk arrives. Call it before the client connects. Close releases it.
func (p *Proxy) Hold(match []byte) (held <-chan struct{}, release func()) {
	h := &hold{match: match, held: make(chan struct{}), release: make(chan struct{})}
	p.mu.Lock()
	p.hold = h
	p.mu.Unlock()
	return h.held, h.free
}

func (h *hold) free() { h.freed.Do(func() { close(h.release) }) }

// copyUp copies client → target, holding back the chunk Hold asks for.
func (p *Proxy) copyUp(up, c net.Conn) {
	p.mu.Lock()
	h := p.hold
	p.mu.Unlock()
	if h == nil {
		io.Copy(up, c)
		return
	}
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if bytes.Contains(buf[:n], h.match) {
				h.once.Do(func() { close(h.held) })
				<-h.release
			}
			if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut closes every connection; with down, new ones are refused until a Cut
// with down false.
func (p *Proxy) Cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Close stops listening, closes every connection and waits for the
// proxy's goroutines to end.
func (p *Proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	if p.hold != nil {
		p.hold.free()
	}
	p.mu.Unlock()
	p.Cut(true)
	p.wg.Wait()
}
