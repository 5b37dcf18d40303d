use holdfast_tests::{packet::*, xdp::*};

#[test]
fn discover_gets_an_offer() {
    let fx = Fixture::new();
    let (action, out) = fx.run(&Request::discover(VM_MAC).frame());
    assert_eq!(action, XDP_TX);
    let r = parse_reply(&out).unwrap();
    assert_eq!(r.msg_type(), Some(2));
    assert_eq!(r.yiaddr, VM_IP);
}
