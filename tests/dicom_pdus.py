"""A-ASSOCIATE-AC PDUs encoded by pynetdicom, for the test servers and the benchmark's responder.

The collection reads accepts with its own parser; building them with pynetdicom keeps
that parser checked against an independent encoder.
"""

from __future__ import annotations

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def accept_pdu(called="ANY-SCP", calling="DICOMSEC-PROBE", contexts=((1, 0),), max_length=16384,
               identity_response=None, implementation_uid=None):
    """Encode an A-ASSOCIATE-AC.

    contexts: (presentation context id, result) pairs, each on Implicit VR Little Endian.
    identity_response: the server response of a user identity sub-item, or None for none.
    """
    from pynetdicom.pdu import A_ASSOCIATE_AC
    from pynetdicom.pdu_items import (
        ApplicationContextItem,
        ImplementationClassUIDSubItem,
        MaximumLengthSubItem,
        PresentationContextItemAC,
        TransferSyntaxSubItem,
        UserIdentitySubItemAC,
        UserInformationItem,
    )

    ac = A_ASSOCIATE_AC()
    ac._called_aet = called
    ac._calling_aet = calling
    app = ApplicationContextItem()
    app.application_context_name = DICOM_APPLICATION_CONTEXT
    items = [app]
    for context_id, result in contexts:
        ctx = PresentationContextItemAC()
        ctx.presentation_context_id = context_id
        ctx.result_reason = result
        ts = TransferSyntaxSubItem()
        ts.transfer_syntax_name = IMPLICIT_VR_LITTLE_ENDIAN
        ctx.transfer_syntax_sub_item = [ts]
        items.append(ctx)
    user = UserInformationItem()
    max_len = MaximumLengthSubItem()
    max_len.maximum_length_received = max_length
    user.user_data = [max_len]
    if implementation_uid is not None:
        impl = ImplementationClassUIDSubItem()
        impl.implementation_class_uid = implementation_uid
        user.user_data.append(impl)
    if identity_response is not None:
        uid = UserIdentitySubItemAC()
        uid.server_response = identity_response
        user.user_data.append(uid)
    items.append(user)
    ac.variable_items = items
    return ac.encode()


def dimse_response_pdus(command_field, status, message_id=1, data_set=None, context_id=1, max_pdu=16384):
    """Encode a DIMSE response (C-ECHO-RSP 0x8030, C-FIND-RSP 0x8020, C-STORE-RSP 0x8001)
    as P-DATA-TF bytes with pynetdicom, for test servers that answer requests by hand."""
    from io import BytesIO

    from pynetdicom import dimse_messages
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import P_DATA_TF

    classes = {
        0x8030: dimse_messages.C_ECHO_RSP,
        0x8020: dimse_messages.C_FIND_RSP,
        0x8001: dimse_messages.C_STORE_RSP,
    }
    message = classes[command_field]()
    command = message.command_set
    command.CommandField = command_field
    command.MessageIDBeingRespondedTo = message_id
    command.Status = status
    command.AffectedSOPClassUID = {0x8030: "1.2.840.10008.1.1", 0x8020: "1.2.840.10008.5.1.4.1.2.2.1",
                                   0x8001: "1.2.840.10008.5.1.4.1.1.7"}[command_field]
    command.CommandDataSetType = 0x0101 if data_set is None else 0x0001
    if data_set is not None:
        message.data_set = BytesIO(encode(data_set, True, True))
    message._set_command_group_length()
    return b"".join(P_DATA_TF(primitive).encode() for primitive in message.encode_msg(context_id, max_pdu))
