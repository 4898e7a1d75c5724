import { readFileSync } from "node:fs";
import { join } from "node:path";
import { XMLParser } from "fast-xml-parser";
import { describe, expect, it } from "vitest";
import {
  addRoutedInterface, domainName, hasRoutedMetadata, interfaceXml, metadataXml, parseDomainXml, removeRoutedInterface,
  routedInterfaces, serializeDomainXml, XMLNS,
} from "../../src/libvirt/domain-xml.js";

const fixture = (name: string) => readFileSync(join(import.meta.dirname, "../fixtures", name), "utf8");
const iface = { network: "service", ip: "172.31.16.5", mac: "52:54:00:aa:bb:cc", tap: "tap-3f9a01c2e4" };
const iface2 = { network: "service", ip: "172.31.16.6", mac: "52:54:00:aa:bb:cd", tap: "tap-0123456789" };

/** A canonical form that ignores quoting style and whitespace between elements: "equivalent documents". */
function canonical(xml: string): unknown {
  return new XMLParser({ ignoreAttributes: false, preserveOrder: true, trimValues: true, commentPropName: "#c", cdataPropName: "#d", processEntities: false, parseTagValue: false, parseAttributeValue: false })
    .parse(xml.replace(/&apos;/g, "'").replace(/&quot;/g, '"'));
}

const shapes: Array<[string, string]> = [
  ["a running domain with an interface, other tools' metadata, comments and CDATA", fixture("domain-running.xml")],
  ["a minimal domain without devices or metadata", fixture("domain-minimal.xml")],
  ["odd but valid quoting and an XML declaration", `<?xml version="1.0" encoding="UTF-8"?>\n<domain type='qemu'><name>q</name><description>it's "x"</description><devices><emulator>/bin/q</emulator><interface type="ethernet"><target dev='other0' managed="no"/></interface></devices></domain>`],
];

describe("domain XML patching", () => {
  it.each(shapes)("round-trips %s unchanged", (_what, xml) => {
    expect(canonical(serializeDomainXml(parseDomainXml(xml)))).toEqual(canonical(xml));
  });

  it.each(shapes)("adds and removes a routed interface on %s, giving back an equivalent document", (_what, xml) => {
    const doc = parseDomainXml(xml);
    addRoutedInterface(doc, iface);
    addRoutedInterface(doc, iface2);
    const patched = serializeDomainXml(doc);
    const again = parseDomainXml(patched);
    expect(routedInterfaces(again)).toEqual([iface, iface2]);
    expect(hasRoutedMetadata(again)).toBe(true);
    expect(patched).toContain(`<interface type="ethernet"><mac address="52:54:00:aa:bb:cc"/><script path=""/><target dev="tap-3f9a01c2e4" managed="no"/><model type="virtio"/></interface>`);
    expect(patched).toContain(`xmlns:vmrouted="${XMLNS}"`);
    removeRoutedInterface(again, iface.ip);
    removeRoutedInterface(again, iface2.ip);
    expect(canonical(serializeDomainXml(again))).toEqual(canonical(xml));
  });

  it("keeps other tools' metadata, CDATA and comments, and places the interface after existing ones", () => {
    const doc = parseDomainXml(fixture("domain-running.xml"));
    addRoutedInterface(doc, iface);
    const out = serializeDomainXml(doc);
    expect(out).toContain(`<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">`);
    expect(out).toContain("<![CDATA[<not parsed>]]>");
    expect(out).toContain("<!-- devices follow; do not reorder -->");
    expect(out).toContain("frontend &amp; cache");
    expect(out.indexOf('<interface type="network">')).toBeLessThan(out.indexOf('<interface type="ethernet">'));
    expect(out.indexOf('<interface type="ethernet">')).toBeLessThan(out.indexOf('<serial type="pty">'));
    expect(domainName(doc)).toBe("web-01");
  });

  it("reads metadata whatever prefix libvirt gave our namespace", () => {
    const xml = `<domain><name>n</name><metadata><vr:interfaces xmlns:vr="${XMLNS}"><vr:interface network="service" ip="172.31.16.9" mac="52:54:00:00:00:09" tap="tap-x"/></vr:interfaces></metadata></domain>`;
    expect(routedInterfaces(parseDomainXml(xml))).toEqual([{ network: "service", ip: "172.31.16.9", mac: "52:54:00:00:00:09", tap: "tap-x" }]);
    expect(hasRoutedMetadata(parseDomainXml(fixture("domain-running.xml")))).toBe(false);
  });

  it("refuses a second interface for the same IP", () => {
    const doc = parseDomainXml(fixture("domain-minimal.xml"));
    addRoutedInterface(doc, iface);
    expect(() => addRoutedInterface(doc, { ...iface, tap: "tap-other" })).toThrow(/already has a routed interface/);
  });

  it("renders the device XML for attach-device and the metadata for virsh metadata", () => {
    expect(interfaceXml(iface)).toMatch(/<interface type="ethernet">\s*<mac address="52:54:00:aa:bb:cc"\/>\s*<script path=""\/>\s*<target dev="tap-3f9a01c2e4" managed="no"\/>\s*<model type="virtio"\/>\s*<\/interface>/);
    expect(metadataXml([iface])).toBe(`<interfaces><interface network="service" ip="172.31.16.5" mac="52:54:00:aa:bb:cc" tap="tap-3f9a01c2e4"/></interfaces>`);
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
  ])("rejects %s without expanding anything", (_what, xml, message) => {
    expect(() => parseDomainXml(xml)).toThrow(message);
  });

  it("never expands undeclared entity references in text", () => {
    const doc = parseDomainXml(`<domain><name>a&amp;b</name><description>&custom;</description></domain>`);
    expect(serializeDomainXml(doc)).toContain("<description>&custom;</description>");
  });
});
