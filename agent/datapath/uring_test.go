package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An agent may make its sockets, connects and sends through io_uring
// rather than the system calls the other helpers use: the requests run in
// the kernel's own context (inline at submission, or on an io-wq worker
// thread of the agent's), not in a system call of the agent's. The helpers
// below drive a ring directly, as an attacker's program would, with no
// library in between.

// The io_uring ABI (include/uapi/linux/io_uring.h).
const (
	uringOpSendmsg = 9
	uringOpConnect = 16
	uringOpSocket  = 45 // Linux 5.19

	uringOffSQRing = 0
	uringOffCQRing = 0x8000000
	uringOffSQEs   = 0x10000000

	uringEnterGetEvents = 1
)

type uringSQOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type uringCQOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type uringParams struct {
	SQEntries, CQEntries, Flags, SQThreadCPU, SQThreadIdle, Features, WQFd uint32
	Resv                                                                   [3]uint32
	SQOff                                                                  uringSQOffsets
	CQOff                                                                  uringCQOffsets
}

type uringSQE struct {
	Opcode      uint8
	Flags       uint8
	IOPrio      uint16
	Fd          int32
	Off         uint64
	Addr        uint64
	Len         uint32
	OpFlags     uint32
	UserData    uint64
	BufIndex    uint16
	Personality uint16
	FileIndex   int32
	Addr3       uint64
	Pad         uint64
}

type uringCQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// uring is a ring of one entry: each call submits one request and waits
// for its completion.
type uring struct {
	fd       int
	sq, cq   []byte
	sqes     []byte
	p        uringParams
	sqTail   *uint32
	sqArray  *uint32
	cqHead   *uint32
	cqTail   *uint32
	cqeFirst unsafe.Pointer
}

func newUring() (*uring, error) {
	u := &uring{}
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, 1, uintptr(unsafe.Pointer(&u.p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	u.fd = int(fd)
	var err error
	if u.sq, err = unix.Mmap(u.fd, uringOffSQRing, int(u.p.SQOff.Array+u.p.SQEntries*4), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("mmap sq ring: %w", err)
	}
	if u.cq, err = unix.Mmap(u.fd, uringOffCQRing, int(u.p.CQOff.CQEs+u.p.CQEntries*uint32(unsafe.Sizeof(uringCQE{}))), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("mmap cq ring: %w", err)
	}
	if u.sqes, err = unix.Mmap(u.fd, uringOffSQEs, int(u.p.SQEntries*uint32(unsafe.Sizeof(uringSQE{}))), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("mmap sqes: %w", err)
	}
	u.sqTail = (*uint32)(unsafe.Pointer(&u.sq[u.p.SQOff.Tail]))
	u.sqArray = (*uint32)(unsafe.Pointer(&u.sq[u.p.SQOff.Array]))
	u.cqHead = (*uint32)(unsafe.Pointer(&u.cq[u.p.CQOff.Head]))
	u.cqTail = (*uint32)(unsafe.Pointer(&u.cq[u.p.CQOff.Tail]))
	u.cqeFirst = unsafe.Pointer(&u.cq[u.p.CQOff.CQEs])
	return u, nil
}

// do submits sqe and returns its completion's result: a value, or a
// negated errno.
func (u *uring) do(sqe uringSQE) (int32, error) {
	*(*uringSQE)(unsafe.Pointer(&u.sqes[0])) = sqe
	tail := atomic.LoadUint32(u.sqTail)
	*u.sqArray = 0 // one entry: the ring's only slot names the only SQE
	atomic.StoreUint32(u.sqTail, tail+1)
	for {
		_, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(u.fd), 1, 1, uringEnterGetEvents, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, fmt.Errorf("io_uring_enter: %w", errno)
		}
		break
	}
	head := atomic.LoadUint32(u.cqHead)
	if head == atomic.LoadUint32(u.cqTail) {
		return 0, fmt.Errorf("io_uring_enter returned without a completion")
	}
	cqe := *(*uringCQE)(unsafe.Add(u.cqeFirst, uintptr(head&(u.p.CQEntries-1))*unsafe.Sizeof(uringCQE{})))
	atomic.StoreUint32(u.cqHead, head+1)
	return cqe.Res, nil
}

// socket makes a socket through the ring (IORING_OP_SOCKET), or with
// socket(2) where the kernel has no such operation.
func (u *uring) socket(domain, typ, proto int) (int, error) {
	res, err := u.do(uringSQE{Opcode: uringOpSocket, Fd: int32(domain), Off: uint64(typ | unix.SOCK_CLOEXEC), Len: uint32(proto)})
	if err != nil {
		return -1, err
	}
	if res == -int32(unix.EINVAL) {
		return unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
	}
	if res < 0 {
		return -1, fmt.Errorf("io_uring socket: %w", syscall.Errno(-res))
	}
	return int(res), nil
}

// uringConnect makes a socket of domain and connects it to sa, both
// through u.
func uringConnect[T any](u *uring, domain int, sa *T) (int, error) {
	fd, err := u.socket(domain, unix.SOCK_STREAM, 0)
	if err != nil {
		return -1, err
	}
	// sa is on the heap, whose objects do not move, and kept alive until
	// the kernel has copied it: the ring holds its address as a number.
	res, err := u.do(uringSQE{Opcode: uringOpConnect, Fd: int32(fd), Addr: uint64(uintptr(unsafe.Pointer(sa))), Off: uint64(unsafe.Sizeof(*sa))})
	runtime.KeepAlive(sa)
	if err == nil && res < 0 {
		err = fmt.Errorf("io_uring connect: %w", syscall.Errno(-res))
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// helperUringConnect connects to addr (IPv4) with the socket and the
// connect both submitted through io_uring, then reads a line.
func helperUringConnect(addr string) result {
	u, err := newUring()
	if err != nil {
		return errResult(err)
	}
	fd, err := uringConnect(u, unix.AF_INET, rawSockaddr(netip.MustParseAddrPort(addr)))
	if err != nil {
		return errResult(err)
	}
	f := os.NewFile(uintptr(fd), "uring")
	defer f.Close()
	return connected(f, fd)
}

// helperUringUnix connects a unix stream socket to path through io_uring.
func helperUringUnix(path string) result {
	u, err := newUring()
	if err != nil {
		return errResult(err)
	}
	sa := &unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	for i := range len(path) {
		sa.Path[i] = int8(path[i])
	}
	fd, err := uringConnect(u, unix.AF_UNIX, sa)
	if err != nil {
		return errResult(err)
	}
	unix.Close(fd)
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// helperUringRaw makes a raw ICMP socket through io_uring.
func helperUringRaw() result {
	u, err := newUring()
	if err != nil {
		return errResult(err)
	}
	fd, err := u.socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if err != nil {
		return errResult(err)
	}
	unix.Close(fd)
	return result{PID: os.Getpid(), UID: os.Getuid()}
}

// rawSockaddr is ap as the kernel takes it, on the heap.
func rawSockaddr(ap netip.AddrPort) *unix.RawSockaddrInet4 {
	sa := &unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: ap.Addr().As4()}
	sa.Port = ap.Port()<<8 | ap.Port()>>8 // network order
	return sa
}

// helperUringSendto sends a datagram to addr (IPv4) from an unconnected UDP
// socket, both made through io_uring (IORING_OP_SENDMSG).
func helperUringSendto(addr string) result {
	u, err := newUring()
	if err != nil {
		return errResult(err)
	}
	ap := netip.MustParseAddrPort(addr)
	fd, err := u.socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return errResult(err)
	}
	defer unix.Close(fd)
	sa := rawSockaddr(ap)
	payload := []byte("ping")
	iov := &unix.Iovec{Base: &payload[0]}
	iov.SetLen(len(payload))
	msg := &unix.Msghdr{Name: (*byte)(unsafe.Pointer(sa)), Namelen: uint32(unsafe.Sizeof(*sa)), Iov: iov, Iovlen: 1}
	res, err := u.do(uringSQE{Opcode: uringOpSendmsg, Fd: int32(fd), Addr: uint64(uintptr(unsafe.Pointer(msg))), Len: 1})
	runtime.KeepAlive(msg)
	if err != nil {
		return errResult(err)
	}
	if res < 0 {
		return errResult(fmt.Errorf("io_uring sendmsg: %w", syscall.Errno(-res)))
	}
	return result{PID: os.Getpid(), UID: os.Getuid()}
}
