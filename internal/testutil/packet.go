package testutil

import (
	"encoding/binary"
	"net/netip"
)

// Packet describes a crafted Ethernet/IPv4 packet.
type Packet struct {
	Src, Dst         netip.Addr
	Proto            uint8 // 6 TCP, 17 UDP, 1 ICMP, other: raw payload
	SrcPort, DstPort uint16
	TCPFlags         uint8 // TCP
	ICMPType         uint8 // ICMP
	ICMPID           uint16
	Inner            []byte // ICMP errors: the IP header and 8 bytes it is about
	FragOffset       uint16 // in 8-byte units
	MoreFragments    bool
	ID               uint16
	Payload          []byte
}

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Bytes renders the packet with an Ethernet header.
func (p Packet) Bytes() []byte {
	l4 := p.L4()
	ip := p.IPHeader(len(l4))
	eth := make([]byte, 14)
	eth[0], eth[6] = 0x02, 0x02
	eth[5], eth[11] = 1, 2
	binary.BigEndian.PutUint16(eth[12:], 0x0800)
	out := append(eth, ip...)
	return append(out, l4...)
}

// IPHeader renders the IPv4 header for an L4 part of l4len bytes.
func (p Packet) IPHeader(l4len int) []byte {
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+l4len))
	binary.BigEndian.PutUint16(ip[4:], p.ID)
	frag := p.FragOffset & 0x1fff
	if p.MoreFragments {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = p.Proto
	s, d := p.Src.As4(), p.Dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return ip
}

// L4 renders the transport part.
func (p Packet) L4() []byte {
	if p.FragOffset != 0 {
		return p.Payload
	}
	switch p.Proto {
	case 6:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.SrcPort)
		binary.BigEndian.PutUint16(h[2:], p.DstPort)
		h[12] = 5 << 4
		h[13] = p.TCPFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
		return append(h, p.Payload...)
	case 17:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.SrcPort)
		binary.BigEndian.PutUint16(h[2:], p.DstPort)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(p.Payload)))
		return append(h, p.Payload...)
	case 1:
		h := make([]byte, 8)
		h[0] = p.ICMPType
		binary.BigEndian.PutUint16(h[4:], p.ICMPID)
		h = append(h, p.Inner...)
		h = append(h, p.Payload...)
		binary.BigEndian.PutUint16(h[2:], checksum(h))
		return h
	}
	return p.Payload
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
