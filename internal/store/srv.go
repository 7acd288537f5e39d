package store

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/srv"
)

// SRVEndpoints finds etcd's client URLs in DNS, as etcdctl --discovery-srv
// and confd -srv-domain do. With domain set it asks etcd's own helper for
// _etcd-client-ssl._tcp.DOMAIN (https) and _etcd-client._tcp.DOMAIN (http);
// with record set (a full SRV name, e.g. _etcd-client._tcp.example.com) it
// looks that record up and uses scheme for every target. It blocks for the
// lookups; each call asks DNS again.
func SRVEndpoints(ctx context.Context, domain, record, scheme string) ([]string, error) {
	if domain != "" {
		c, err := srv.GetClient("etcd-client", strings.TrimSuffix(domain, "."), "")
		if err != nil {
			return nil, fmt.Errorf("srv lookup for %s: %w", domain, err)
		}
		if len(c.Endpoints) == 0 {
			return nil, fmt.Errorf("srv lookup for %s: no records", domain)
		}
		return trimDots(c.Endpoints), nil
	}
	_, addrs, err := net.DefaultResolver.LookupSRV(ctx, "", "", record)
	if err != nil {
		return nil, fmt.Errorf("srv lookup %s: %w", record, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("srv lookup %s: no records", record)
	}
	if scheme == "" {
		scheme = "http"
	}
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = (&url.URL{Scheme: scheme, Host: net.JoinHostPort(strings.TrimSuffix(a.Target, "."), strconv.Itoa(int(a.Port)))}).String()
	}
	return out, nil
}

// trimDots drops the final dot of each URL's host name (DNS answers are
// fully qualified; a TLS server name is not).
func trimDots(urls []string) []string {
	for i, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			continue
		}
		if h, p, err := net.SplitHostPort(u.Host); err == nil {
			u.Host = net.JoinHostPort(strings.TrimSuffix(h, "."), p)
			urls[i] = u.String()
		}
	}
	return urls
}
