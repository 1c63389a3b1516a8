"""One association attempt against a DICOM SCP, reported as one JSON object on stdout.

Runs on a lab host, so the PACS sees the association come from that host's
address. Stages, each reported:

  tcp   "open", or why the TCP connection failed (a firewall reset shows "refused")
  tls   with --tls: "ok" if the server kept a verified TLS session open, or the error
        the server's alert produced (no certificate, untrusted certificate)
  outcome  "accepted" (then a C-ECHO's status), "rejected" (with result, source,
        reason of the A-ASSOCIATE-RJ), or "aborted" when no A-ASSOCIATE answer came
  store    with --store, on an accepted association: the C-STORE status of one small
        generated instance, or "aborted" when the PACS aborted the association instead

Never logs passcodes or key material: pynetdicom's debug logger stays off.
"""

import argparse
import json
import socket
import ssl
import sys


def tls_context(args):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    return ctx


def probe_tcp(args):
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as exc:
        return f"error: {exc}"


def probe_tls(args):
    """Handshake, then wait briefly: a server that rejects the client certificate
    says so with an alert right after the handshake (TLS 1.3) or during it."""
    try:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as raw:
            with tls_context(args).wrap_socket(raw, server_hostname=args.server_name or args.host) as tls:
                tls.settimeout(1.5)
                try:
                    data = tls.recv(1)
                except socket.timeout:
                    return "ok"
                return "ok" if data else "closed"
    except ssl.SSLError as exc:
        return f"error: {exc.reason or exc}"
    except OSError as exc:
        return f"error: {exc}"


def small_instance():
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ImplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PROBE"
    ds.PatientName = "Probe^Association"
    ds.Modality = "CT"
    return ds


def try_store(assoc):
    status = assoc.send_c_store(small_instance())
    if assoc.is_aborted or not status:
        return "aborted"
    return int(status.Status)


def probe_association(args):
    # Imported here so the TCP and TLS stages work without pynetdicom.
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage, Verification

    ae = AE(ae_title=args.calling)
    ae.add_requested_context(Verification)
    if args.store:
        ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.connection_timeout = args.timeout
    tls_args = (tls_context(args), args.server_name or args.host) if args.tls else None
    assoc = ae.associate(args.host, args.port, ae_title=args.called, tls_args=tls_args)
    if assoc.is_established:
        status = assoc.send_c_echo()
        report = {"outcome": "accepted", "echo_status": int(status.Status) if status else None}
        if args.store:
            report["store"] = try_store(assoc)
        if assoc.is_established:
            assoc.release()
        return report
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return {
            "outcome": "rejected",
            "result": int(rj.result),
            "source": int(rj.result_source),
            "reason": int(rj.diagnostic),
        }
    return {"outcome": "aborted"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=4242)
    parser.add_argument("--called", required=True, help="called AE title (the PACS's)")
    parser.add_argument("--calling", required=True, help="calling AE title (ours)")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca", help="CA bundle that must have signed the server certificate")
    parser.add_argument("--cert", help="client certificate")
    parser.add_argument("--key", help="client private key")
    parser.add_argument("--server-name", help="name to check the server certificate against")
    parser.add_argument("--store", action="store_true", help="also send one C-STORE")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()

    report = {"tcp": probe_tcp(args)}
    if report["tcp"] == "open":
        if args.tls:
            report["tls"] = probe_tls(args)
        report.update(probe_association(args))
    else:
        report["outcome"] = "unreachable"
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
