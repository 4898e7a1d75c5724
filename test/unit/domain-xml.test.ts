import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  addRoutedInterface, domainName, domainUuid, hasRoutedMetadata, interfaceXml, metadataXml, parseDomainXml, removeRoutedInterface,
  routedInterfaces, serializeDomainXml, XMLNS,
} from "../../src/libvirt/domain-xml.js";

const fixture = (name: string) => readFileSync(join(import.meta.dirname, "../fixtures", name), "utf8");
const iface = { network: "service", ip: "172.31.16.5", mac: "52:54:00:aa:bb:cc", tap: "tap-3f9a01c2e4" };
const iface2 = { network: "service", ip: "172.31.16.6", mac: "52:54:00:aa:bb:cd", tap: "tap-0123456789" };
const OUR_DEVICE = `<interface type="ethernet"><mac address="52:54:00:aa:bb:cc"/><target dev="tap-3f9a01c2e4" managed="no"/><model type="virtio"/></interface>`;

/** Whitespace between tags removed: to compare structure regardless of indentation. */
const compact = (xml: string) => xml.replace(/>\s+</g, "><");
/** How many elements named `name` there are (outside comments and CDATA). */
const count = (xml: string, name: string) => xml.replace(/<!--[\s\S]*?-->|<!\[CDATA\[[\s\S]*?\]\]>/g, "").match(new RegExp(`<${name}[\\s>/]`, "g"))?.length ?? 0;

function patched(xml: string, ...ifaces: typeof iface[]): string {
  const doc = parseDomainXml(xml);
  for (const i of ifaces) addRoutedInterface(doc, i);
  return serializeDomainXml(doc);
}

function unpatched(xml: string, ...ips: string[]): string {
  const doc = parseDomainXml(xml);
  for (const ip of ips) removeRoutedInterface(doc, ip);
  return serializeDomainXml(doc);
}

// Whatever vmrouted may change, with the whitespace it puts before it.
const OURS = [/[ \t\r\n]*<interface type="ethernet">(?:(?!<\/interface>)[\s\S])*tap-[0-9a-f]{10}[\s\S]*?<\/interface>/g,
  /[ \t\r\n]*<vmrouted:interfaces [\s\S]*?<\/vmrouted:interfaces>/g];
const withoutOurs = (xml: string) => OURS.reduce((x, re) => x.replace(re, ""), xml);

const fixtures: Array<[string, string]> = [
  ["a running domain with an interface, other tools' metadata, comments and CDATA", fixture("domain-running.xml")],
  ["a minimal domain without devices or metadata", fixture("domain-minimal.xml")],
  ["a virt-install domain (q35, libosinfo metadata)", fixture("domain-virt-install.xml")],
  ["odd but valid quoting and an XML declaration", `<?xml version="1.0" encoding="UTF-8"?>\n<domain type='qemu'><name>q</name><description>it's "x"</description><devices><emulator>/bin/q</emulator><interface type="ethernet"><target dev='other0' managed="no"/></interface></devices></domain>`],
  ["odd whitespace, tabs, CRLF and '>' in attribute values", `<domain  type = 'kvm' >\r\n\t<name>odd</name>\r\n  <!-- <devices> in a comment -->\r\n   <memory  unit = 'KiB' >1</memory>\r\n<devices>\r\n\t\t<emulator>/x</emulator>  \r\n\t\t<disk device="a>b"><![CDATA[</devices>]]></disk>\r\n\t</devices >\r\n</domain>\r\n`],
  ["self-closing <metadata/> and <devices/>", `<domain type='qemu'>\n  <name>e</name>\n  <metadata/>\n  <devices />\n</domain>`],
  ["empty <metadata></metadata> with whitespace and a comment-only <devices>", `<domain>\n  <name>e</name>\n  <metadata>\n  </metadata>\n  <devices><!-- none yet --></devices>\n</domain>`],
  ["metadata after devices, with a processing instruction", `<domain><name>n</name><devices><emulator>/e</emulator><?pi x="<y>"?></devices><metadata><a:x xmlns:a="urn:a">t</a:x></metadata></domain>`],
];

describe("domain XML patching", () => {
  it.each(fixtures)("gives back %s byte for byte", (_what, xml) => {
    expect(serializeDomainXml(parseDomainXml(xml))).toBe(xml);
  });

  it.each(fixtures)("patches %s there and back, byte for byte, in either order", (_what, xml) => {
    const out = patched(xml, iface, iface2);
    expect(routedInterfaces(parseDomainXml(out))).toEqual([iface, iface2]);
    expect(compact(out)).toContain(OUR_DEVICE);
    expect(out).not.toContain("<script");
    expect(out).toContain(`xmlns:vmrouted="${XMLNS}"`);
    expect(count(out, "metadata")).toBe(1);
    expect(count(out, "devices")).toBe(1);
    expect(unpatched(out, iface.ip, iface2.ip)).toBe(xml);
    expect(unpatched(out, iface2.ip, iface.ip)).toBe(xml);
  });

  // (Into an element without element children, vmrouted's element goes right before the end tag, after the blanks there.)
  it.each(fixtures.filter(([, xml]) => /<metadata>\s*</.test(xml) && !/<metadata>\s*<\/metadata>/.test(xml) && xml.includes("<devices>")))(
    "changes nothing outside what it adds to %s", (_what, xml) => {
      const out = patched(xml, iface, iface2);
      expect(out).not.toBe(xml);
      expect(withoutOurs(out)).toBe(xml);
    });

  it("puts its entry into the existing <metadata>, beside the others, never a second <metadata>", () => {
    for (const xml of [fixture("domain-running.xml"), fixture("domain-virt-install.xml")]) {
      const out = patched(xml, iface);
      expect(count(out, "metadata")).toBe(1);
      const metadata = out.slice(out.indexOf("<metadata>"), out.indexOf("</metadata>"));
      expect(metadata).toContain(`<vmrouted:interfaces xmlns:vmrouted="${XMLNS}">`);
      expect(metadata).toMatch(/<nova:instance |<libosinfo:libosinfo /);
      expect(withoutOurs(out)).toBe(xml);
    }
  });

  it("keeps other tools' metadata, CDATA and comments, and places the interface after existing ones", () => {
    const doc = parseDomainXml(fixture("domain-running.xml"));
    addRoutedInterface(doc, iface);
    const out = serializeDomainXml(doc);
    expect(out).toContain(`<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">`);
    expect(out).toContain("<nova:flavor name='m1.small'><![CDATA[<not parsed>]]></nova:flavor>");
    expect(out).toContain("<!-- devices follow; do not reorder -->");
    expect(out).toContain("frontend &amp; cache");
    expect(out).toContain("<seclabel type='dynamic' model='apparmor' relabel=\"yes\"/>");
    expect(out.indexOf("<interface type='network'>")).toBeLessThan(out.indexOf('<interface type="ethernet">'));
    expect(out.indexOf('<interface type="ethernet">')).toBeLessThan(out.indexOf("<serial type='pty'>"));
    // Indented as its siblings are.
    expect(out).toContain(`    </interface>\n    <interface type="ethernet">\n      <mac address="52:54:00:aa:bb:cc"/>\n      <target`);
    expect(out).toContain(`    </nova:instance>\n    <vmrouted:interfaces xmlns:vmrouted="${XMLNS}">\n      <vmrouted:interface network=`);
    expect(domainName(doc)).toBe("web-01");
  });

  it("creates <metadata> where libvirt puts it, and removes exactly that again", () => {
    const xml = `<domain type='kvm'>\n  <name>n</name>\n  <uuid>0e4b2c1a-0000-4000-8000-000000000001</uuid>\n  <memory>1</memory>\n  <devices>\n    <emulator>/e</emulator>\n  </devices>\n</domain>\n`;
    const out = patched(xml, iface);
    expect(out).toContain(`<uuid>0e4b2c1a-0000-4000-8000-000000000001</uuid>\n  <metadata>\n    <vmrouted:interfaces xmlns:vmrouted="${XMLNS}">\n      <vmrouted:interface network="service" ip="172.31.16.5" mac="52:54:00:aa:bb:cc" tap="tap-3f9a01c2e4"/>\n    </vmrouted:interfaces>\n  </metadata>\n  <memory>`);
    expect(out).toContain(`<emulator>/e</emulator>\n    <interface type="ethernet">\n      <mac address="52:54:00:aa:bb:cc"/>\n      <target dev="tap-3f9a01c2e4" managed="no"/>\n      <model type="virtio"/>\n    </interface>\n  </devices>`);
    expect(unpatched(out, iface.ip)).toBe(xml);
  });

  it("gives an empty <metadata></metadata> back in an equivalent form", () => {
    const xml = `<domain><name>e</name><metadata></metadata><devices><emulator>/e</emulator></devices></domain>`;
    const back = unpatched(patched(xml, iface), iface.ip);
    expect(back).toBe(xml.replace("<metadata></metadata>", "<metadata/>"));
  });

  it("reads metadata whatever prefix libvirt gave our namespace, and adds to it with that prefix", () => {
    const xml = `<domain><name>n</name><metadata><vr:interfaces xmlns:vr="${XMLNS}"><vr:interface network="service" ip="172.31.16.9" mac="52:54:00:00:00:09" tap="tap-x"/></vr:interfaces></metadata></domain>`;
    const first = { network: "service", ip: "172.31.16.9", mac: "52:54:00:00:00:09", tap: "tap-x" };
    expect(routedInterfaces(parseDomainXml(xml))).toEqual([first]);
    const out = patched(xml, iface);
    expect(out).toContain(`<vr:interface network="service" ip="172.31.16.5"`);
    expect(routedInterfaces(parseDomainXml(out))).toEqual([first, iface]);
    expect(unpatched(out, iface.ip)).toBe(xml);
    expect(hasRoutedMetadata(parseDomainXml(fixture("domain-running.xml")))).toBe(false);
  });

  it("reads only the first <metadata>, as libvirt does", () => {
    const ours = `<vmrouted:interfaces xmlns:vmrouted="${XMLNS}"><vmrouted:interface network="service" ip="172.31.16.9" mac="m" tap="t"/></vmrouted:interfaces>`;
    expect(routedInterfaces(parseDomainXml(`<domain><metadata><a:x xmlns:a="urn:a"/></metadata><metadata>${ours}</metadata></domain>`))).toEqual([]);
  });

  it("refuses a second interface for the same IP", () => {
    const doc = parseDomainXml(fixture("domain-minimal.xml"));
    addRoutedInterface(doc, iface);
    expect(() => addRoutedInterface(doc, { ...iface, tap: "tap-other" })).toThrow(/already has a routed interface/);
  });

  it("refuses to add beside a foreign interface with our tap's name, and changes nothing", () => {
    const xml = `<domain type='kvm'>\n  <name>f</name>\n  <devices>\n    <interface type='ethernet'>\n      <target dev='tap-3f9a01c2e4'/>\n    </interface>\n  </devices>\n</domain>`;
    const doc = parseDomainXml(xml);
    expect(() => addRoutedInterface(doc, iface)).toThrow("domain already has an interface with target dev tap-3f9a01c2e4 that vmrouted does not manage");
    expect(serializeDomainXml(doc)).toBe(xml);
  });

  it("removes only the interface that is exactly ours, never a foreign one with the same target dev", () => {
    const foreign = [
      `<interface type='bridge'>\n      <source bridge='br0'/>\n      <target dev='tap-3f9a01c2e4'/>\n    </interface>`,
      `<interface type='ethernet'>\n      <mac address='52:54:00:00:00:01'/>\n      <target dev='tap-3f9a01c2e4' managed='no'/>\n    </interface>`,
    ];
    const metadata = `<metadata>\n    <vmrouted:interfaces xmlns:vmrouted="${XMLNS}">\n      <vmrouted:interface network="service" ip="172.31.16.5" mac="52:54:00:aa:bb:cc" tap="tap-3f9a01c2e4"/>\n    </vmrouted:interfaces>\n  </metadata>`;
    const ours = `<interface type='ethernet'>\n      <mac address='52:54:00:AA:BB:CC'/>\n      <target dev='tap-3f9a01c2e4' managed='no'/>\n      <model type='virtio'/>\n      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>\n    </interface>`;
    const domain = (devices: string[], meta = metadata) => `<domain type='kvm'>\n  <name>f</name>\n  ${meta}\n  <devices>\n    <emulator>/e</emulator>${devices.map((d) => `\n    ${d}`).join("")}\n  </devices>\n</domain>`;
    // Only foreign ones: they stay, the metadata entry goes.
    const onlyForeign = unpatched(domain(foreign), iface.ip);
    expect(onlyForeign).toBe(domain(foreign, "").replace("\n  \n", "\n"));
    // Ours (as libvirt writes it back, with an address) among them: only ours goes.
    expect(unpatched(domain([foreign[0]!, ours, foreign[1]!]), iface.ip)).toBe(domain(foreign, "").replace("\n  \n", "\n"));
  });

  it("renders the device XML for attach-device and the metadata for virsh metadata", () => {
    expect(interfaceXml(iface)).toBe(`<interface type="ethernet">\n  <mac address="52:54:00:aa:bb:cc"/>\n  <target dev="tap-3f9a01c2e4" managed="no"/>\n  <model type="virtio"/>\n</interface>`);
    expect(metadataXml([iface])).toBe(`<interfaces><interface network="service" ip="172.31.16.5" mac="52:54:00:aa:bb:cc" tap="tap-3f9a01c2e4"/></interfaces>`);
  });

  it("reads the domain's name and uuid, entity references decoded", () => {
    const doc = parseDomainXml(`<domain><name>a&amp;b&#x2d;c</name><uuid>\n  4dea22b3-1d52-d8f3-2516-782e98ab3fa0 </uuid></domain>`);
    expect(domainName(doc)).toBe("a&b-c");
    expect(domainUuid(doc)).toBe("4dea22b3-1d52-d8f3-2516-782e98ab3fa0");
    expect(domainUuid(parseDomainXml(fixture("domain-minimal.xml")))).toBeUndefined();
    expect(domainName(parseDomainXml("<domain><name></name></domain>"))).toBeUndefined();
  });

  it("escapes what it writes, and refuses control characters", () => {
    const odd = { ...iface, network: `a"b'<&>` };
    const out = patched(fixture("domain-minimal.xml"), odd);
    expect(out).toContain(`network="a&quot;b&apos;&lt;&amp;&gt;"`);
    expect(routedInterfaces(parseDomainXml(out))).toEqual([odd]);
    expect(() => patched(fixture("domain-minimal.xml"), { ...iface, network: "a\nb" })).toThrow(/control characters/);
  });

  it.each([
    ["entity expansion (billion laughs)", `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><domain><name>&lol2;</name></domain>`, /DOCTYPE and entity declarations are not allowed/],
    ["an external entity", `<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]><domain><name>&x;</name></domain>`, /not allowed/],
    ["a lowercase doctype", `<!doctype domain><domain/>`, /not allowed/],
    ["huge input", `<domain><name>${"x".repeat(1024 * 1024)}</name></domain>`, /larger than/],
    ["garbage", "not xml at all <", /not well-formed XML|root element/],
    ["unclosed tags", "<domain><name>x</domain>", /not well-formed XML at line 1/],
    ["another root element", "<network><name>x</name></network>", /root element is not <domain>/],
    ["two root elements", "<domain/><domain/>", /not well-formed|root element/],
    ["an element the parser will not take", "<domain><__proto__/></domain>", /cannot be read/],
    ["very deep nesting", `<domain>${"<a>".repeat(100_000)}${"</a>".repeat(100_000)}</domain>`, /./],
  ])("rejects %s with one InputError line, expanding nothing", (_what, xml, message) => {
    let error: unknown;
    try { parseDomainXml(xml); } catch (e) { error = e; }
    expect((error as Error).name).toBe("InputError");
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain("\n");
  });

  it("never expands undeclared entity references in text", () => {
    const doc = parseDomainXml(`<domain><name>a&amp;b</name><description>&custom;</description></domain>`);
    addRoutedInterface(doc, iface);
    expect(serializeDomainXml(doc)).toContain("<description>&custom;</description>");
  });
});
