package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/interlock-dev/interlock/agent/control"
	"github.com/interlock-dev/interlock/agent/proxy"
	"github.com/interlock-dev/interlock/policy"
)

// containerCacheTTL is how long what the runtime said of a container is
// used without asking again: labels and image are fixed at creation, so
// this only bounds how long a removed container's id keeps answering.
const containerCacheTTL = 5 * time.Second

// containerCacheMax bounds the cache; expired entries go when it is full.
const containerCacheMax = 4096

// dockerID matches a cgroup path element Docker names after a container:
// <id> under --cgroup-parent (cgroupfs driver), docker-<id>.scope (systemd
// driver).
var dockerID = regexp.MustCompile(`^(?:docker-)?([0-9a-f]{64})(?:\.scope)?$`)

// containers tells which container a cgroup belongs to by asking the
// Docker Engine API over its unix socket. Safe for concurrent use.
type containers struct {
	client *http.Client
	mu     sync.Mutex
	cache  map[string]cachedContainer
}

type cachedContainer struct {
	c  *policy.Container
	at time.Time
}

func newContainers(socket string) *containers {
	// No kept connections: a unix connect costs microseconds, answers are
	// cached, and an idle connection would hold a descriptor and two
	// goroutines for as long as interlockd runs.
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	return &containers{client: &http.Client{Transport: tr, Timeout: 2 * time.Second}, cache: map[string]cachedContainer{}}
}

// containerID returns the id of the Docker container a cgroup path
// (relative to the cgroup2 mount) lies in, the innermost path element
// named after one; "" when none is.
func containerID(cgroup string) string {
	for p := cgroup; p != "/" && p != "." && p != ""; p = path.Dir(p) {
		if m := dockerID.FindStringSubmatch(path.Base(p)); m != nil {
			return m[1]
		}
	}
	return ""
}

// dockerInspect is the part of GET /containers/{id}/json read here.
type dockerInspect struct {
	ID     string `json:"Id"`
	Image  string `json:"Image"`
	Config struct {
		Image  string            `json:"Image"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
	State struct {
		Pid int `json:"Pid"`
	} `json:"State"`
}

// errUnanswered marks a lookup the runtime did not answer (not reached,
// an error status, an answer that does not decode): whether the cgroup is
// a container's, and which, is unknown.
var errUnanswered = errors.New("the container runtime did not answer")

// lookup returns the container the cgroup belongs to, or nil with the
// reason when it belongs to none or the runtime cannot say (errUnanswered).
// The container's own main process must be in that cgroup (or above it,
// for a cgroup the container made inside its own): a cgroup merely named
// after a container elsewhere gets nothing.
func (cs *containers) lookup(ctx context.Context, cgroup string) (*policy.Container, error) {
	id := containerID(cgroup)
	if id == "" {
		return nil, fmt.Errorf("cgroup %s is no container's", cgroup)
	}
	cs.mu.Lock()
	e, ok := cs.cache[id]
	cs.mu.Unlock()
	if ok && time.Since(e.at) < containerCacheTTL {
		return e.c, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/containers/"+id+"/json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := cs.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask docker about container %.12s: %w: %w", id, errUnanswered, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, fmt.Errorf("docker has no container %.12s", id)
	default:
		return nil, fmt.Errorf("ask docker about container %.12s: %w: %s", id, errUnanswered, resp.Status)
	}
	var in dockerInspect
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil {
		return nil, fmt.Errorf("decode docker's answer about container %.12s: %w: %w", id, errUnanswered, err)
	}
	if in.ID != id || in.State.Pid == 0 {
		return nil, fmt.Errorf("container %.12s is not running", id)
	}
	own, err := control.CgroupOf(in.State.Pid)
	if err != nil {
		// Its main process gone meanwhile, or /proc not read: unknown.
		return nil, fmt.Errorf("cgroup of container %.12s: %w: %w", id, errUnanswered, err)
	}
	if cgroup != own && !strings.HasPrefix(cgroup, own+"/") {
		return nil, fmt.Errorf("cgroup %s is not container %.12s's (%s)", cgroup, id, own)
	}
	c := &policy.Container{Runtime: "docker", ID: in.ID, Image: in.Config.Image, ImageID: in.Image, Labels: in.Config.Labels}
	cs.mu.Lock()
	if len(cs.cache) >= containerCacheMax {
		for k, e := range cs.cache {
			if time.Since(e.at) >= containerCacheTTL {
				delete(cs.cache, k)
			}
		}
	}
	cs.cache[id] = cachedContainer{c: c, at: time.Now()}
	cs.mu.Unlock()
	return c, nil
}

// containerIdentifier adds the caller's container to what next identifies,
// when the policy in force selects on containers: a caller in no container
// keeps Container nil, and so matches no such identity. One whose
// container the runtime did not answer for is refused if an identity of
// its tag selects on containers (or on what else only its process tells):
// placed without one, it would escape an identity that names its image to
// deny it.
type containerIdentifier struct {
	d    *Daemon
	next proxy.Identifier
}

func (ci containerIdentifier) Identify(peer, local netip.AddrPort) (proxy.Identity, netip.AddrPort, error) {
	id, dst, err := ci.next.Identify(peer, local)
	if err != nil || !ci.d.policy.Current().NeedsContainer() {
		return id, dst, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, cerr := ci.d.containers.lookup(ctx, id.Cgroup)
	if errors.Is(cerr, errUnanswered) && ci.d.policy.Current().SelectsOnProcess(id.Name) {
		return proxy.Identity{}, netip.AddrPort{}, fmt.Errorf("connection %s: %w", peer, cerr)
	}
	if cerr != nil {
		ci.d.log.Info().Err(cerr).Str("identity", id.Name).Str("peer", peer.String()).
			Msg("no container for the caller: identities selecting on containers do not match it")
	}
	id.Container = c
	return id, dst, nil
}
